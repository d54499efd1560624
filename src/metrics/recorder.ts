import {
  subscribeDiagnostics,
  subscribeTracing,
  type DiagnosticsChannelName,
  type DiagnosticsMessages,
  type LockTarget,
  type TracingChannelName,
  type TracingContexts,
} from '../core/diagnostics.js';
import { RECIPE_METRICS, type MetricDefinition } from './instruments.js';

/** Metric attributes (OpenTelemetry's name; Prometheus calls them labels). */
export type MetricAttributes = Readonly<Record<string, string>>;

/** Where observations go: the in-memory registry, an OpenTelemetry meter... */
export interface MetricSink {
  /** A counter or up-down counter changes by `value`. */
  add(metric: MetricDefinition, value: number, attributes: MetricAttributes): void;
  /** A histogram observes `value`. */
  record(metric: MetricDefinition, value: number, attributes: MetricAttributes): void;
}

/** Options of the channel-to-metrics recorder. */
export interface RecorderOptions {
  /**
   * Add the lock, election, queue or service name as attribute
   * `etcd_recipes.name` (default false). Names can be unbounded (a lock
   * per job ID): keep it off unless you know they are few.
   */
  byName?: boolean;
}

const M = RECIPE_METRICS;

function errorType(err: unknown): string {
  const e = err as { code?: unknown; name?: unknown } | null;
  if (e && typeof e.code === 'string') return e.code;
  if (e && typeof e.name === 'string') return e.name;
  return '_OTHER';
}

/**
 * Subscribes to every channel and turns messages into observations on
 * `sink`. Returns a function that unsubscribes. Gauges (up-down counters)
 * only count what started while subscribed, so they never go negative.
 */
export function recordChannels(sink: MetricSink, options: RecorderOptions = {}): () => void {
  const subs: (() => void)[] = [];
  const on = <N extends DiagnosticsChannelName>(name: N, fn: (m: DiagnosticsMessages[N]) => void) => {
    subs.push(subscribeDiagnostics(name, fn));
  };
  const end = <N extends TracingChannelName>(name: N, asyncEnd: (c: TracingContexts[N]) => void) => {
    subs.push(subscribeTracing(name, { asyncEnd }));
  };
  /** Each message counts one on `metric`, with the attributes `attrs` makes of it. */
  const count = <N extends DiagnosticsChannelName>(
    name: N,
    metric: MetricDefinition,
    attrs: (m: DiagnosticsMessages[N]) => MetricAttributes = () => none,
  ) => on(name, (m) => sink.add(metric, 1, attrs(m)));
  // A duration from the call's own start event, so failed calls are timed too.
  const timed = <N extends TracingChannelName>(name: N, fn: (c: TracingContexts[N], seconds: number) => void) => {
    const starts = new WeakMap<object, number>();
    const start = (c: object) => void starts.set(c, performance.now());
    const asyncEnd = (c: TracingContexts[N]) =>
      fn(c, (performance.now() - (starts.get(c) ?? performance.now())) / 1000);
    subs.push(subscribeTracing(name, { start, asyncEnd }));
  };
  const named = (name: string, attrs: Record<string, string> = {}): MetricAttributes =>
    options.byName ? { ...attrs, 'etcd_recipes.name': name } : attrs;
  const lockAttrs = (t: LockTarget, extra: Record<string, string> = {}): MetricAttributes =>
    named(t.name, {
      'etcd_recipes.recipe': t.recipe,
      ...(t.mode ? { 'etcd_recipes.lock.mode': t.mode } : {}),
      ...extra,
    });
  /** `o`, or the outcome `error` with its `error.type` when the call failed. */
  const outcome = (o: string, err?: unknown): Record<string, string> =>
    err === undefined
      ? { 'etcd_recipes.outcome': o }
      : { 'etcd_recipes.outcome': 'error', 'error.type': errorType(err) };
  const none: MetricAttributes = {};
  const holdId = (key: string, token: bigint | undefined) => `${key}@${token}`;

  // Sessions
  const live = new Set<string>();
  const ended = (m: { leaseId: string }) => {
    if (live.delete(m.leaseId)) sink.add(M.sessionActive, -1, none);
  };
  on('etcd-recipes:session:created', (m) => {
    sink.add(M.sessionCreated, 1, none);
    if (!live.has(m.leaseId)) {
      live.add(m.leaseId);
      sink.add(M.sessionActive, 1, none);
    }
  });
  count('etcd-recipes:session:renewed-late', M.sessionRenewedLate, (m) => ({ 'etcd_recipes.reason': m.reason }));
  count('etcd-recipes:session:lost', M.sessionLost);
  count('etcd-recipes:session:closed', M.sessionClosed);
  on('etcd-recipes:session:lost', ended);
  on('etcd-recipes:session:closed', ended);

  // Locks and permits
  const waiting = new WeakSet<object>();
  const held = new Set<string>();
  on('etcd-recipes:lock:wait', (m) => {
    waiting.add(m.context);
    sink.add(M.lockWaiting, 1, lockAttrs(m));
  });
  timed('etcd-recipes:lock', (c, seconds) => {
    if (waiting.delete(c)) sink.add(M.lockWaiting, -1, lockAttrs(c));
    const r = c.result;
    sink.record(M.lockWaitDuration, seconds, lockAttrs(c, outcome(r?.acquired ? 'acquired' : 'busy', c.error)));
    if (r?.acquired) {
      held.add(holdId(r.key!, r.fencingToken));
      sink.add(M.lockHeld, 1, lockAttrs(c));
    }
  });
  const holdEnded = (m: DiagnosticsMessages['etcd-recipes:lock:released'], o: string) => {
    sink.record(M.lockHoldDuration, m.heldMs / 1000, lockAttrs(m, outcome(o)));
    if (held.delete(holdId(m.key, m.fencingToken))) sink.add(M.lockHeld, -1, lockAttrs(m));
  };
  on('etcd-recipes:lock:released', (m) => holdEnded(m, 'released'));
  on('etcd-recipes:lock:lost', (m) => holdEnded(m, 'lost'));
  count('etcd-recipes:lock:lost', M.lockLost, (m) => lockAttrs(m));

  // Elections
  const leading = new Set<string>();
  timed('etcd-recipes:election:campaign', (c, seconds) => {
    const elected = c.error === undefined && !!c.result;
    sink.record(M.campaignDuration, seconds, named(c.name, elected ? outcome('elected') : outcome('error', c.error)));
    if (!elected) return;
    leading.add(holdId(c.key, c.result!.revision));
    sink.add(M.electionLeading, 1, named(c.name));
  });
  const termEnded = (m: { name: string; key: string; revision: bigint }) => {
    if (leading.delete(holdId(m.key, m.revision))) sink.add(M.electionLeading, -1, named(m.name));
  };
  on('etcd-recipes:election:deposed', termEnded);
  on('etcd-recipes:election:resigned', termEnded);
  count('etcd-recipes:election:deposed', M.electionDeposed, (m) => named(m.name));
  count('etcd-recipes:election:leader', M.electionLeaderChanged, (m) => named(m.name));

  // STM
  timed('etcd-recipes:stm', (c, seconds) => {
    const o = errorType(c.error) === 'STM_CONFLICT' ? outcome('give_up') : outcome('commit', c.error);
    sink.record(M.stmDuration, seconds, { 'etcd_recipes.stm.isolation': c.isolation, ...o });
  });
  end('etcd-recipes:stm:attempt', (c) => {
    if (c.result?.outcome === 'conflict')
      sink.add(M.stmAttemptConflicted, 1, { 'etcd_recipes.stm.isolation': c.isolation });
  });

  // Queues and work queues
  end('etcd-recipes:queue:enqueue', (c) => {
    if (c.error === undefined) sink.add(M.queueEnqueued, 1, named(c.name, { 'etcd_recipes.recipe': c.recipe }));
  });
  end('etcd-recipes:work-queue:ack', (c) => {
    if (c.error === undefined) sink.add(M.workQueueAcked, 1, named(c.name));
  });
  timed('etcd-recipes:queue:dequeue', (c, seconds) => {
    const attrs = named(c.name, { 'etcd_recipes.recipe': c.recipe, ...outcome('dequeued', c.error) });
    sink.record(M.queueDequeueDuration, seconds, attrs);
  });
  timed('etcd-recipes:work-queue:claim', (c, seconds) =>
    sink.record(M.workQueueClaimDuration, seconds, named(c.name, outcome('claimed', c.error))),
  );
  count('etcd-recipes:work-queue:release', M.workQueueReleased, (m) => named(m.name));
  count('etcd-recipes:work-queue:retry', M.workQueueRetried, (m) => named(m.name));
  count('etcd-recipes:work-queue:dead-letter', M.workQueueDeadLettered, (m) =>
    named(m.name, { 'etcd_recipes.reason': m.reason }),
  );

  // Watches, caches, services
  count('etcd-recipes:watch:reconnect', M.watchReconnected);
  count('etcd-recipes:watch:compacted', M.watchCompacted);
  count('etcd-recipes:prefix-cache:resync', M.prefixCacheResynced);
  count('etcd-recipes:service:lost', M.serviceLost, (m) => named(m.service));
  count('etcd-recipes:service:re-registered', M.serviceReregistered, (m) => named(m.service));

  return () => {
    for (const u of subs.splice(0)) u();
  };
}
