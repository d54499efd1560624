import { InvalidArgumentError } from '../core/errors.js';
import { checkBoolean, checkOptions } from '../core/validate.js';
import { DEFAULT_DURATION_BUCKETS, RECIPE_METRICS, type MetricDefinition } from './instruments.js';
import { prometheusCollectors, type PrometheusRegistryLike } from './prometheus.js';
import { openTelemetrySink, type OpenTelemetryMeterLike } from './opentelemetry.js';
import { recordChannels, type MetricAttributes, type MetricSink } from './recorder.js';

/** Options of {@link RecipeMetrics}. */
export interface RecipeMetricsOptions {
  /**
   * Adds attribute `etcd_recipes.name` (the lock, election, queue or service name). Default false:
   * names can be unbounded.
   */
  byName?: boolean;
  /** Histogram bucket boundaries in seconds, increasing (default {@link DEFAULT_DURATION_BUCKETS}). */
  buckets?: readonly number[];
}

/** A counter's or up-down counter's value for one set of attributes. */
export interface CounterPoint {
  /** The attribute set. */
  readonly attributes: MetricAttributes;
  /** The running total (counter) or current amount (up-down counter). */
  readonly value: number;
}

/** A histogram's state for one set of attributes. */
export interface HistogramPoint {
  /** The attribute set. */
  readonly attributes: MetricAttributes;
  /** How many values were observed. */
  readonly count: number;
  /** The sum of the observed values (seconds, for durations). */
  readonly sum: number;
  /**
   * Observations per bucket: `bucketCounts[i]` counts values ≤ `boundaries[i]` and above the previous
   * boundary; the last one is above every boundary.
   */
  readonly bucketCounts: readonly number[];
}

/** One metric in a {@link RecipeMetrics.snapshot}. */
export type MetricSnapshot =
  | (MetricDefinition & {
      /** A counter or an up-down counter. */
      readonly kind: 'counter' | 'updowncounter';
      /** One point per attribute set observed. */
      readonly points: readonly CounterPoint[];
    })
  | (MetricDefinition & {
      /** A histogram. */
      readonly kind: 'histogram';
      /** The bucket boundaries, in seconds. */
      readonly boundaries: readonly number[];
      /** One point per attribute set observed. */
      readonly points: readonly HistogramPoint[];
    });

interface Cell {
  attributes: MetricAttributes;
  value: number;
  count: number;
  sum: number;
  buckets: number[];
}

/** Attribute sets as a stable map key. */
function keyOf(attributes: MetricAttributes): string {
  return JSON.stringify(Object.entries(attributes).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/**
 * Counters and histograms of what the recipes do, from their
 * `node:diagnostics_channel` events, with no dependency: an in-memory
 * registry read with {@link RecipeMetrics.snapshot}, which can also feed a
 * prom-client `Registry` ({@link RecipeMetrics.exportToPrometheus}) or an
 * OpenTelemetry `Meter` ({@link RecipeMetrics.exportToOpenTelemetry}).
 * Metric names: docs/observability.md.
 *
 * It subscribes when constructed and counts from then on, in this process
 * (both the ESM and the CJS copy of the library, which publish on the same
 * channels). `close()` unsubscribes.
 */
export class RecipeMetrics implements Disposable {
  /** The histogram bucket boundaries, in seconds. */
  readonly boundaries: readonly number[];
  readonly #cells = new Map<MetricDefinition, Map<string, Cell>>();
  readonly #sinks: MetricSink[] = [];
  readonly #onClose: (() => void)[] = [];
  #unsubscribe: (() => void) | undefined;

  /**
   * Subscribes to the library's channels.
   * @throws InvalidArgumentError for bad options
   */
  constructor(options: RecipeMetricsOptions = {}) {
    checkOptions(options);
    if (options.byName !== undefined) checkBoolean(options.byName, 'options.byName');
    const buckets = options.buckets ?? DEFAULT_DURATION_BUCKETS;
    const increasing = (b: unknown, i: number) => Number.isFinite(b) && (i === 0 || (b as number) > buckets[i - 1]!);
    if (!Array.isArray(buckets) || buckets.length === 0 || !buckets.every(increasing))
      throw new InvalidArgumentError(
        'options.buckets',
        'must be a non-empty array of finite numbers in increasing order',
      );
    this.boundaries = Object.freeze([...buckets]);
    for (const def of Object.values(RECIPE_METRICS)) this.#cells.set(def, new Map());
    this.#unsubscribe = recordChannels(
      {
        add: (metric, value, attributes) => {
          this.#cell(metric, attributes).value += value;
          for (const s of this.#sinks) s.add(metric, value, attributes);
        },
        record: (metric, value, attributes) => {
          const cell = this.#cell(metric, attributes);
          cell.count++;
          cell.sum += value;
          const i = this.boundaries.findIndex((b) => value <= b);
          cell.buckets[i === -1 ? this.boundaries.length : i]!++;
          for (const s of this.#sinks) s.record(metric, value, attributes);
        },
      },
      { byName: options.byName },
    );
  }

  #cell(metric: MetricDefinition, attributes: MetricAttributes): Cell {
    const cells = this.#cells.get(metric)!;
    const k = keyOf(attributes);
    let cell = cells.get(k);
    if (!cell) {
      cell = { attributes, value: 0, count: 0, sum: 0, buckets: new Array<number>(this.boundaries.length + 1).fill(0) };
      cells.set(k, cell);
    }
    return cell;
  }

  /** Every metric with its current points (a copy). Metrics with nothing observed yet have no points. */
  snapshot(): MetricSnapshot[] {
    return [...this.#cells].map(([def, cells]): MetricSnapshot => {
      const all = [...cells.values()];
      if (def.kind !== 'histogram')
        return { ...def, kind: def.kind, points: all.map(({ attributes, value }) => ({ attributes, value })) };
      const points = all.map(({ attributes, count, sum, buckets }) => ({
        attributes,
        count,
        sum,
        bucketCounts: [...buckets],
      }));
      return { ...def, kind: 'histogram', boundaries: this.boundaries, points };
    });
  }

  /**
   * A counter's total, or a histogram's count of observations, over the
   * points whose attributes include `attributes` (all points by default).
   * @param name - an OpenTelemetry metric name, e.g. `etcd_recipes.lock.lost`
   * @throws InvalidArgumentError for an unknown name
   */
  value(name: string, attributes: MetricAttributes = {}): number {
    const def = Object.values(RECIPE_METRICS).find((d) => d.name === name);
    if (!def)
      throw new InvalidArgumentError(
        'name',
        `must be one of the metric names of RECIPE_METRICS, got ${JSON.stringify(name)}`,
      );
    let total = 0;
    for (const cell of this.#cells.get(def)!.values()) {
      if (Object.entries(attributes).every(([k, v]) => cell.attributes[k] === v))
        total += def.kind === 'histogram' ? cell.count : cell.value;
    }
    return total;
  }

  /**
   * Registers every metric as a collector on a prom-client `Registry` (or
   * anything with its `registerMetric`), under its Prometheus name (see
   * `prometheusName`). prom-client reads this object's current values at
   * each scrape. `close()` removes them again when the registry has
   * `removeSingleMetric`.
   */
  exportToPrometheus(registry: PrometheusRegistryLike): void {
    if (typeof registry !== 'object' || registry === null || typeof registry.registerMetric !== 'function') {
      throw new InvalidArgumentError('registry', 'must be a prom-client Registry (an object with registerMetric)');
    }
    const names = prometheusCollectors(this, registry);
    this.#onClose.push(() => {
      for (const n of names) registry.removeSingleMetric?.(n);
    });
  }

  /**
   * Records every observation from now on on instruments of an
   * OpenTelemetry `Meter` (from `@opentelemetry/api`'s
   * `metrics.getMeter(...)`), each created on first use under its
   * OpenTelemetry name. Histograms get this object's bucket boundaries as
   * advice. Call it right after construction to miss nothing.
   */
  exportToOpenTelemetry(meter: OpenTelemetryMeterLike): void {
    const creates = ['createCounter', 'createUpDownCounter', 'createHistogram'] as const;
    if (typeof meter !== 'object' || meter === null || creates.some((m) => typeof meter[m] !== 'function')) {
      throw new InvalidArgumentError(
        'meter',
        'must be an OpenTelemetry Meter (createCounter, createUpDownCounter, createHistogram)',
      );
    }
    this.#sinks.push(openTelemetrySink(meter, this.boundaries));
  }

  /** Unsubscribes from the channels and unregisters from Prometheus registries. Idempotent. */
  close(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    this.#sinks.length = 0;
    for (const f of this.#onClose.splice(0)) f();
  }

  /** `using metrics = new RecipeMetrics()` closes it at scope exit. */
  [Symbol.dispose](): void {
    this.close();
  }
}
