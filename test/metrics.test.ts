import { channel, tracingChannel } from 'node:diagnostics_channel';
import {
  AggregationTemporality,
  DataPointType,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
  type HistogramMetricData,
} from '@opentelemetry/sdk-metrics';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DEFAULT_DURATION_BUCKETS,
  Election,
  isRecipeError,
  Mutex,
  prometheusName,
  RECIPE_METRICS,
  RecipeMetrics,
  runSTM,
  Session,
  type JobMessage,
  type JobClaimContext,
  type EnqueueContext,
} from '../src/index.js';
import { useCluster, waitForKey } from './helpers.js';

/** A lock handoff between two sessions: A holds, B queues, A releases, B holds and releases. */
async function lockHandoff(
  client: ReturnType<ReturnType<ReturnType<typeof useCluster>>['client']>,
  name: string,
): Promise<void> {
  await using a = await Session.create(client, { ttl: 10 });
  await using b = await Session.create(client, { ttl: 10 });
  const ma = new Mutex(a, name);
  const mb = new Mutex(b, name);
  await ma.lock();
  const bLocking = mb.lock();
  await waitForKey(client, mb.key);
  await ma.unlock();
  await bLocking;
  await mb.unlock();
}

describe('RecipeMetrics', () => {
  const etcd = useCluster();
  let metrics: RecipeMetrics;
  beforeEach(() => {
    metrics = new RecipeMetrics({ byName: true });
  });
  afterEach(() => metrics.close());

  it('counts a lock handoff, an election handoff and an STM conflict then commit', async () => {
    const client = etcd().client();
    const sessionsBefore = metrics.value('etcd_recipes.session.created');
    await lockHandoff(client, 'm/lock');
    const lock = { 'etcd_recipes.name': 'm/lock', 'etcd_recipes.recipe': 'mutex' };
    expect(metrics.value('etcd_recipes.lock.wait.duration', { ...lock, 'etcd_recipes.outcome': 'acquired' })).toBe(2);
    expect(metrics.value('etcd_recipes.lock.hold.duration', { ...lock, 'etcd_recipes.outcome': 'released' })).toBe(2);
    expect(metrics.value('etcd_recipes.lock.lost', lock)).toBe(0);
    expect(metrics.value('etcd_recipes.lock.held', lock)).toBe(0);
    expect(metrics.value('etcd_recipes.lock.waiting', lock)).toBe(0);
    expect(metrics.value('etcd_recipes.session.created') - sessionsBefore).toBe(2);
    expect(metrics.value('etcd_recipes.session.closed')).toBe(2);
    expect(metrics.value('etcd_recipes.session.active')).toBe(0);
    // B waited for A: its wait is in a bucket above the smallest, and the sum is positive.
    const wait = metrics.snapshot().find((m) => m.name === 'etcd_recipes.lock.wait.duration')!;
    expect(wait.kind).toBe('histogram');
    if (wait.kind !== 'histogram') return;
    expect(wait.boundaries).toEqual(DEFAULT_DURATION_BUCKETS);
    const point = wait.points.find((p) => p.attributes['etcd_recipes.name'] === 'm/lock')!;
    expect(point.sum).toBeGreaterThan(0);
    expect(point.bucketCounts.reduce((x, y) => x + y, 0)).toBe(2);

    {
      await using a = await Session.create(client, { ttl: 10 });
      await using b = await Session.create(client, { ttl: 10 });
      const ea = new Election(a, 'm/election');
      const eb = new Election(b, 'm/election');
      await ea.campaign('a');
      expect(metrics.value('etcd_recipes.election.leading', { 'etcd_recipes.name': 'm/election' })).toBe(1);
      const bCampaign = eb.campaign('b');
      await waitForKey(client, eb.key);
      await ea.resign();
      await bCampaign;
      await eb.resign();
    }
    const election = { 'etcd_recipes.name': 'm/election' };
    expect(
      metrics.value('etcd_recipes.election.campaign.duration', { ...election, 'etcd_recipes.outcome': 'elected' }),
    ).toBe(2);
    expect(metrics.value('etcd_recipes.election.leading', election)).toBe(0);
    expect(metrics.value('etcd_recipes.election.deposed', election)).toBe(0);

    await client.put('m/stm').value('1');
    let attempt = 0;
    await runSTM(client, async (tx) => {
      const v = Number(await tx.get('m/stm'));
      if (++attempt === 1) await client.put('m/stm').value('5');
      tx.put('m/stm', String(v + 1));
    });
    expect(metrics.value('etcd_recipes.stm.attempt.conflicted')).toBe(1);
    expect(
      metrics.value('etcd_recipes.stm.duration', {
        'etcd_recipes.outcome': 'commit',
        'etcd_recipes.stm.isolation': 'serializable-snapshot',
      }),
    ).toBe(1);
    const giveUp = await runSTM(
      client,
      async (tx) => {
        await tx.get('m/stm');
        await client.put('m/stm').value(String(Math.random()));
        tx.put('m/stm', 'x');
      },
      { retries: 0 },
    ).catch((e: unknown) => e);
    expect(isRecipeError(giveUp, 'STM_CONFLICT')).toBe(true);
    expect(metrics.value('etcd_recipes.stm.duration', { 'etcd_recipes.outcome': 'give_up' })).toBe(1);
    expect(metrics.value('etcd_recipes.stm.attempt.conflicted')).toBe(2);

    // Closed: nothing more is counted.
    metrics.close();
    await lockHandoff(client, 'm/lock');
    expect(metrics.value('etcd_recipes.lock.wait.duration', lock)).toBe(2);
  });

  it('counts lost locks and deposed leaders; gauges return to zero', async () => {
    const client = etcd().client();
    const session = await Session.create(client, { ttl: 2 });
    try {
      await new Mutex(session, 'm/lost').acquire();
      const election = new Election(session, 'm/lost-e');
      await election.campaign('x');
      expect(metrics.value('etcd_recipes.lock.held', { 'etcd_recipes.name': 'm/lost' })).toBe(1);
      const deposed = new Promise((resolve) => election.once('lost', resolve));
      const lost = new Promise((resolve) => session.once('lost', resolve));
      await client.leaseClient.leaseRevoke({ ID: session.leaseId });
      await Promise.all([deposed, lost]);
    } finally {
      await session.close();
    }
    expect(metrics.value('etcd_recipes.session.lost')).toBe(1);
    expect(metrics.value('etcd_recipes.session.active')).toBe(0);
    expect(metrics.value('etcd_recipes.lock.lost', { 'etcd_recipes.name': 'm/lost' })).toBe(1);
    expect(metrics.value('etcd_recipes.lock.hold.duration', { 'etcd_recipes.outcome': 'lost' })).toBe(1);
    expect(metrics.value('etcd_recipes.lock.held')).toBe(0);
    expect(metrics.value('etcd_recipes.election.deposed', { 'etcd_recipes.name': 'm/lost-e' })).toBe(1);
    expect(metrics.value('etcd_recipes.election.leading')).toBe(0);
  });

  it('counts the queue channels from their documented messages', async () => {
    // The queue recipes publish these; here the messages are published as documented, to pin the
    // recorder to the shapes.
    const job: JobMessage = { name: 'jobs', id: '00100-1', key: 'jobs/claims/00100-1', fencingToken: 7n, attempts: 2 };
    const enqueue = tracingChannel<unknown, EnqueueContext>('etcd-recipes:queue:enqueue');
    await enqueue.tracePromise(async () => undefined, { recipe: 'work-queue', name: 'jobs', priority: 100 });
    const claim = tracingChannel<unknown, JobClaimContext>('etcd-recipes:work-queue:claim');
    await claim.tracePromise(async () => job, { name: 'jobs', leaseId: '1' });
    channel('etcd-recipes:work-queue:retry').publish(job);
    channel('etcd-recipes:work-queue:release').publish(job);
    channel('etcd-recipes:work-queue:dead-letter').publish({ ...job, reason: 'max-attempts' });
    const ack = tracingChannel<unknown, JobMessage>('etcd-recipes:work-queue:ack');
    await ack.tracePromise(async () => ({}), { ...job });
    await ack
      .tracePromise(
        async () => {
          throw new Error('claim lost');
        },
        { ...job },
      )
      .catch(() => undefined);
    const jobs = { 'etcd_recipes.name': 'jobs' };
    expect(metrics.value('etcd_recipes.queue.enqueued', { ...jobs, 'etcd_recipes.recipe': 'work-queue' })).toBe(1);
    expect(
      metrics.value('etcd_recipes.work_queue.claim.duration', { ...jobs, 'etcd_recipes.outcome': 'claimed' }),
    ).toBe(1);
    expect(metrics.value('etcd_recipes.work_queue.retried', jobs)).toBe(1);
    expect(metrics.value('etcd_recipes.work_queue.released', jobs)).toBe(1);
    expect(
      metrics.value('etcd_recipes.work_queue.dead_lettered', { ...jobs, 'etcd_recipes.reason': 'max-attempts' }),
    ).toBe(1);
    expect(metrics.value('etcd_recipes.work_queue.acked', jobs)).toBe(1);
  });

  it('feeds a real prom-client Registry under Prometheus names', async () => {
    const registry = new Registry();
    metrics.exportToPrometheus(registry);
    await lockHandoff(etcd().client(), 'm/prom');
    const text = await registry.metrics();
    const wait = prometheusName(RECIPE_METRICS.lockWaitDuration);
    expect(wait).toBe('etcd_recipes_lock_wait_duration_seconds');
    expect(text).toContain(`# TYPE ${wait} histogram`);
    expect(text).toMatch(new RegExp(`^${wait}_bucket\\{[^}]*etcd_recipes_name="m/prom"[^}]*le="\\+Inf"\\} 2$`, 'm'));
    expect(text).toMatch(new RegExp(`^${wait}_count\\{[^}]*etcd_recipes_name="m/prom"[^}]*\\} 2$`, 'm'));
    expect(text).toMatch(/^etcd_recipes_session_created_total 2$/m);
    expect(text).toContain('# TYPE etcd_recipes_lock_held gauge');
    const json = await registry.getMetricsAsJSON();
    expect(json.map((m) => m.name)).toContain('etcd_recipes_lock_lost_total');
    // Closing removes them from the registry.
    metrics.close();
    expect(await registry.metrics()).not.toContain('etcd_recipes');
  });

  it('feeds an OpenTelemetry Meter (SDK, in-memory exporter) under OpenTelemetry names', async () => {
    const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
    const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 });
    const provider = new MeterProvider({ readers: [reader] });
    try {
      metrics.exportToOpenTelemetry(provider.getMeter('etcd-recipes-test'));
      await lockHandoff(etcd().client(), 'm/otel');
      await reader.forceFlush();
      const all = exporter.getMetrics().flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics));
      const wait = all.find((m) => m.descriptor.name === 'etcd_recipes.lock.wait.duration') as HistogramMetricData;
      expect(wait.descriptor.unit).toBe('s');
      expect(wait.dataPointType).toBe(DataPointType.HISTOGRAM);
      const point = wait.dataPoints.find((p) => p.attributes['etcd_recipes.name'] === 'm/otel')!;
      expect(point.value.count).toBe(2);
      expect(point.value.buckets.boundaries).toEqual(DEFAULT_DURATION_BUCKETS);
      const created = all.find((m) => m.descriptor.name === 'etcd_recipes.session.created')!;
      expect(created.dataPoints.reduce((n, p) => n + (p.value as number), 0)).toBe(2);
      const held = all.find((m) => m.descriptor.name === 'etcd_recipes.lock.held')!;
      expect(held.dataPoints.reduce((n, p) => n + (p.value as number), 0)).toBe(0);
    } finally {
      await provider.shutdown();
    }
  });

  it('rejects bad options and adapters with InvalidArgumentError', () => {
    expect(() => new RecipeMetrics({ buckets: [1, 1] })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT', argument: 'options.buckets' }),
    );
    expect(() => new RecipeMetrics({ byName: 'yes' as unknown as boolean })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    expect(() => metrics.exportToPrometheus({} as never)).toThrow(expect.objectContaining({ argument: 'registry' }));
    expect(() => metrics.exportToOpenTelemetry({ createCounter() {} } as never)).toThrow(
      expect.objectContaining({ argument: 'meter' }),
    );
    expect(() => metrics.value('etcd_recipes.nope')).toThrow(expect.objectContaining({ argument: 'name' }));
  });
});
