import { prometheusLabel, prometheusName } from './instruments.js';
import type { MetricSnapshot } from './recipe-metrics.js';

/** One value line of a prom-client metric. */
export interface PrometheusValue {
  /** The sample's value. */
  value: number;
  /** The sample's labels (attribute names as label names; `le` on histogram buckets). */
  labels: Record<string, string | number>;
  /** Set for a histogram's `_bucket`, `_sum` and `_count` lines. */
  metricName?: string;
}

/** What prom-client asks of a registered metric (its `Metric` shape), declared here so prom-client is no dependency. */
export interface PrometheusMetricLike {
  /** The Prometheus metric name. */
  name: string;
  /** The HELP text. */
  help: string;
  /** The Prometheus type (up-down counters are gauges). */
  type: 'counter' | 'gauge' | 'histogram';
  /** How prom-client's cluster mode aggregates workers' values. */
  aggregator: 'sum';
  /** The metric's current values, read at each scrape. */
  get(): Promise<{
    /** The metric name. */
    name: string;
    /** The HELP text. */
    help: string;
    /** The Prometheus type. */
    type: 'counter' | 'gauge' | 'histogram';
    /** As {@link PrometheusMetricLike.aggregator}. */
    aggregator: 'sum';
    /** One entry per sample line. */
    values: PrometheusValue[];
  }>;
  /** Does nothing: the values belong to the RecipeMetrics. */
  reset(): void;
}

/** The part of prom-client's `Registry` the export uses. */
export interface PrometheusRegistryLike {
  /**
   * Called with a {@link PrometheusMetricLike}. Typed `never` so that
   * prom-client's own signature (its Metric class union) fits: the object
   * meets the contract prom-client's registry uses at run time.
   */
  registerMetric(metric: never): void;
  /** Unregisters the metric named `name` (used by `RecipeMetrics.close()`). */
  removeSingleMetric?(name: string): void;
}

function labels(attributes: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(attributes).map(([k, v]) => [prometheusLabel(k), v]));
}

function values(m: MetricSnapshot, name: string): PrometheusValue[] {
  if (m.kind !== 'histogram') return m.points.map((p) => ({ value: p.value, labels: labels(p.attributes) }));
  const out: PrometheusValue[] = [];
  for (const p of m.points) {
    const l = labels(p.attributes);
    let cumulative = 0;
    m.boundaries.forEach((le, i) => {
      cumulative += p.bucketCounts[i]!;
      out.push({ metricName: `${name}_bucket`, labels: { ...l, le }, value: cumulative });
    });
    out.push({ metricName: `${name}_bucket`, labels: { ...l, le: '+Inf' }, value: p.count });
    out.push({ metricName: `${name}_sum`, labels: l, value: p.sum });
    out.push({ metricName: `${name}_count`, labels: l, value: p.count });
  }
  return out;
}

/** @internal Registers one collector per metric of `source`; returns their names. */
export function prometheusCollectors(
  source: { snapshot(): MetricSnapshot[] },
  registry: PrometheusRegistryLike,
): string[] {
  const names: string[] = [];
  for (const def of source.snapshot()) {
    const type = def.kind === 'counter' ? 'counter' : def.kind === 'updowncounter' ? 'gauge' : 'histogram';
    const collector: PrometheusMetricLike = {
      name: prometheusName(def),
      help: `${def.description} (${def.name}, unit ${def.unit})`,
      type,
      aggregator: 'sum',
      async get() {
        const now = source.snapshot().find((m) => m.name === def.name)!;
        // prom-client may rename the collector (OpenMetrics drops a counter's _total and adds it per
        // line): use its current name.
        const { name, help } = collector;
        return { name, help, type, aggregator: 'sum', values: values(now, name) };
      },
      reset() {
        /* the values belong to RecipeMetrics */
      },
    };
    registry.registerMetric(collector as never);
    names.push(collector.name);
  }
  return names;
}
