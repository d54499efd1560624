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
  type Instrument = { add?(value: number, attributes?: MetricAttributes): void } & {
    record?(value: number, attributes?: MetricAttributes): void;
  };
  const instruments = new Map<MetricDefinition, Instrument>();
  const instrument = (def: MetricDefinition): Instrument => {
    let inst = instruments.get(def);
    if (!inst) {
      const options = { description: def.description, unit: def.unit };
      if (def.kind === 'counter') inst = meter.createCounter(def.name, options);
      else if (def.kind === 'updowncounter') inst = meter.createUpDownCounter(def.name, options);
      else
        inst = meter.createHistogram(def.name, { ...options, advice: { explicitBucketBoundaries: [...boundaries] } });
      instruments.set(def, inst);
    }
    return inst;
  };
  return {
    add: (def, value, attributes) => instrument(def).add?.(value, attributes),
    record: (def, value, attributes) => instrument(def).record?.(value, attributes),
  };
}
