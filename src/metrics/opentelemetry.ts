import type { MetricAttributes, MetricSink } from './recorder.js';
import type { MetricDefinition } from './instruments.js';

/** Options OpenTelemetry's `Meter.create*` take (the part used here). */
export interface OpenTelemetryInstrumentOptions {
  /** The metric's description. */
  description?: string;
  /** The metric's UCUM unit. */
  unit?: string;
  /** Hints for the SDK's default aggregation. */
  advice?: {
    /** Histogram bucket boundaries (in the metric's unit). */
    explicitBucketBoundaries?: number[];
  };
}

/** The part of `@opentelemetry/api`'s `Meter` the export uses, declared here so it is no dependency. */
export interface OpenTelemetryMeterLike {
  /** Creates a counter instrument. */
  createCounter(
    name: string,
    options?: OpenTelemetryInstrumentOptions,
  ): {
    /** Adds `value` (non-negative) to the counter. */
    add(value: number, attributes?: MetricAttributes): void;
  };
  /** Creates an up-down counter instrument. */
  createUpDownCounter(
    name: string,
    options?: OpenTelemetryInstrumentOptions,
  ): {
    /** Adds `value` (positive or negative) to the counter. */
    add(value: number, attributes?: MetricAttributes): void;
  };
  /** Creates a histogram instrument. */
  createHistogram(
    name: string,
    options?: OpenTelemetryInstrumentOptions,
  ): {
    /** Records one observation. */
    record(value: number, attributes?: MetricAttributes): void;
  };
}

/** @internal A sink recording on `meter`'s instruments, each created on first use. */
export function openTelemetrySink(meter: OpenTelemetryMeterLike, boundaries: readonly number[]): MetricSink {
  const adders = new Map<MetricDefinition, { add(value: number, attributes?: MetricAttributes): void }>();
  const recorders = new Map<MetricDefinition, { record(value: number, attributes?: MetricAttributes): void }>();
  const options = (def: MetricDefinition): OpenTelemetryInstrumentOptions => ({
    description: def.description,
    unit: def.unit,
  });
  return {
    add(def, value, attributes) {
      let inst = adders.get(def);
      if (!inst) {
        inst =
          def.kind === 'counter'
            ? meter.createCounter(def.name, options(def))
            : meter.createUpDownCounter(def.name, options(def));
        adders.set(def, inst);
      }
      inst.add(value, attributes);
    },
    record(def, value, attributes) {
      let inst = recorders.get(def);
      if (!inst) {
        inst = meter.createHistogram(def.name, {
          ...options(def),
          advice: { explicitBucketBoundaries: [...boundaries] },
        });
        recorders.set(def, inst);
      }
      inst.record(value, attributes);
    },
  };
}
