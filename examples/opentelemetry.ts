// The recipes in OpenTelemetry: metrics through a Meter, and spans made from the library's
// tracing channels (node:diagnostics_channel). etcd-recipes depends on neither @opentelemetry/api
// nor the SDK; the app brings them. Here the SDK keeps everything in memory and we print it;
// a real app would configure an OTLP exporter instead.
// Run: npx tsx examples/opentelemetry.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { metrics as otelMetrics, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import {
  Mutex,
  RecipeMetrics,
  Session,
  subscribeDiagnostics,
  subscribeTracing,
  TRACING_CHANNELS,
  withLock,
} from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

// --- SDK set-up (the app's, usually done once elsewhere) ---
const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 60_000 });
otelMetrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
const spanExporter = new InMemorySpanExporter();
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(spanExporter)] }));

// --- Metrics: one line ---
const recipeMetrics = new RecipeMetrics();
recipeMetrics.exportToOpenTelemetry(otelMetrics.getMeter('etcd-recipes'));

// --- Spans: one span per traced operation (lock acquire, campaign, STM run and attempt, ...) ---
const tracer = trace.getTracer('etcd-recipes');
const spans = new WeakMap<object, Span>();
const stopTracing = Object.values(TRACING_CHANNELS).map((name) =>
  subscribeTracing(name, {
    start(context) {
      const attributes: Record<string, string> = {};
      for (const [k, v] of Object.entries(context))
        if (typeof v === 'string' || typeof v === 'number') attributes[`etcd_recipes.${k}`] = String(v);
      spans.set(context, tracer.startSpan(name, { attributes }));
    },
    asyncEnd(context) {
      const span = spans.get(context);
      if (!span) return;
      const { result, error } = context as { result?: Record<string, unknown>; error?: unknown };
      for (const [k, v] of Object.entries(result ?? {})) {
        if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean')
          span.setAttribute(`etcd_recipes.${k}`, v);
        else if (typeof v === 'bigint') span.setAttribute(`etcd_recipes.${k}`, v.toString());
      }
      if (error !== undefined) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
      }
      span.end();
    },
  }),
);

const etcd = await exampleEtcd();
try {
  const { client } = etcd;
  await using a = await Session.create(client, { ttl: 10 });
  await using b = await Session.create(client, { ttl: 10 });
  const held = await new Mutex(a, 'locks/nightly').acquire();
  const queued = new Promise<void>((resolve) => {
    const stop = subscribeDiagnostics('etcd-recipes:lock:wait', () => {
      stop();
      resolve();
    });
  });
  const waiting = withLock(client, 'locks/nightly', () => 'done', { session: b });
  await queued;
  await held.release();
  await waiting;
  console.log(`tryLock of a free lock: ${await new Mutex(a, 'locks/other').tryLock()}`);

  for (const span of spanExporter.getFinishedSpans()) {
    const ms = span.duration[0] * 1e3 + span.duration[1] / 1e6;
    console.log(`span ${span.name} ${ms.toFixed(1)} ms ${JSON.stringify(span.attributes)}`);
  }
  await reader.forceFlush();
  for (const m of metricExporter.getMetrics().flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics))) {
    console.log(`metric ${m.descriptor.name} (${m.descriptor.unit}): ${m.dataPoints.length} point(s)`);
  }
  if (spanExporter.getFinishedSpans().filter((s) => s.name === 'etcd-recipes:lock').length !== 3)
    throw new Error('expected 3 lock spans');
} finally {
  for (const stop of stopTracing) stop();
  recipeMetrics.close();
  await etcd.close();
}
