import type { MetricAttributes, MetricSink } from './recorder.js';
import type { MetricDefinition } from './instruments.js';

/** Options OpenTelemetry's `Meter.create*` take (the part used here). */
export interface OpenTelemetryInstrumentOptions {
  description?: string;
  unit?: string;
  advice?: { explicitBucketBoundaries?: number[] };
}

/** The part of `@opentelemetry/api`'s `Meter` the export uses, declared here so it is no dependency. */
export interface OpenTelemetryMeterLike {
  createCounter(name: string, options?: OpenTelemetryInstrumentOptions): { add(value: number, attributes?: MetricAttributes): void };
  createUpDownCounter(name: string, options?: OpenTelemetryInstrumentOptions): { add(value: number, attributes?: MetricAttributes): void };
  createHistogram(name: string, options?: OpenTelemetryInstrumentOptions): { record(value: number, attributes?: MetricAttributes): void };
}

/** @internal A sink recording on `meter`'s instruments, each created on first use. */
export function openTelemetrySink(meter: OpenTelemetryMeterLike, boundaries: readonly number[]): MetricSink {
  const adders = new Map<MetricDefinition, { add(value: number, attributes?: MetricAttributes): void }>();
  const recorders = new Map<MetricDefinition, { record(value: number, attributes?: MetricAttributes): void }>();
  const options = (def: MetricDefinition): OpenTelemetryInstrumentOptions => ({ description: def.description, unit: def.unit });
  return {
    add(def, value, attributes) {
      let inst = adders.get(def);
      if (!inst) {
        inst = def.kind === 'counter' ? meter.createCounter(def.name, options(def)) : meter.createUpDownCounter(def.name, options(def));
        adders.set(def, inst);
      }
      inst.add(value, attributes);
    },
    record(def, value, attributes) {
      let inst = recorders.get(def);
      if (!inst) {
        inst = meter.createHistogram(def.name, { ...options(def), advice: { explicitBucketBoundaries: [...boundaries] } });
        recorders.set(def, inst);
      }
      inst.record(value, attributes);
    },
  };
}
