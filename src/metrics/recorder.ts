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
  const byName = !!options.byName;
  const subs: (() => void)[] = [];
  const on = <N extends DiagnosticsChannelName>(name: N, fn: (m: DiagnosticsMessages[N]) => void) => {
    subs.push(subscribeDiagnostics(name, fn));
  };
  const end = <N extends TracingChannelName>(name: N, fn: (c: TracingContexts[N]) => void) => {
    subs.push(subscribeTracing(name, { asyncEnd: fn }));
  };
  // A duration from the call's own start event, so failed calls are timed too.
  const timed = <N extends TracingChannelName>(name: N, fn: (c: TracingContexts[N], seconds: number) => void) => {
    const starts = new WeakMap<object, number>();
    subs.push(
      subscribeTracing(name, {
        start: (c) => {
          starts.set(c, performance.now());
        },
        asyncEnd: (c) => {
          const since = starts.get(c);
          fn(c, since === undefined ? 0 : (performance.now() - since) / 1000);
        },
      }),
    );
  };
  const named = (name: string, attrs: Record<string, string>): MetricAttributes =>
    byName ? { ...attrs, 'etcd_recipes.name': name } : attrs;
  const lockAttrs = (t: LockTarget, extra: Record<string, string> = {}): MetricAttributes =>
    named(
      t.name,
      t.mode
        ? { 'etcd_recipes.recipe': t.recipe, 'etcd_recipes.lock.mode': t.mode, ...extra }
        : { 'etcd_recipes.recipe': t.recipe, ...extra },
    );
  const outcome = (o: string, err?: unknown): Record<string, string> =>
    err === undefined ? { 'etcd_recipes.outcome': o } : { 'etcd_recipes.outcome': o, 'error.type': errorType(err) };
  const none: MetricAttributes = {};

  // Sessions
  const live = new Set<string>();
  const ended = (leaseId: string) => {
    if (live.delete(leaseId)) sink.add(M.sessionActive, -1, none);
  };
  on('etcd-recipes:session:created', (m) => {
    sink.add(M.sessionCreated, 1, none);
    if (!live.has(m.leaseId)) {
      live.add(m.leaseId);
      sink.add(M.sessionActive, 1, none);
    }
  });
  on('etcd-recipes:session:renewed-late', (m) =>
    sink.add(M.sessionRenewedLate, 1, { 'etcd_recipes.reason': m.reason }),
  );
  on('etcd-recipes:session:lost', (m) => {
    sink.add(M.sessionLost, 1, none);
    ended(m.leaseId);
  });
  on('etcd-recipes:session:closed', (m) => {
    sink.add(M.sessionClosed, 1, none);
    ended(m.leaseId);
  });

  // Locks and permits
  const waiting = new WeakSet<object>();
  const held = new Set<string>();
  const holdId = (key: string, token: bigint | undefined) => `${key}@${token}`;
  on('etcd-recipes:lock:wait', (m) => {
    waiting.add(m.context);
    sink.add(M.lockWaiting, 1, lockAttrs(m));
  });
  timed('etcd-recipes:lock', (c, seconds) => {
    if (waiting.delete(c)) sink.add(M.lockWaiting, -1, lockAttrs(c));
    const r = c.result;
    const o = c.error !== undefined ? outcome('error', c.error) : outcome(r?.acquired ? 'acquired' : 'busy');
    sink.record(M.lockWaitDuration, seconds, lockAttrs(c, o));
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
  on('etcd-recipes:lock:lost', (m) => {
    holdEnded(m, 'lost');
    sink.add(M.lockLost, 1, lockAttrs(m));
  });

  // Elections
  const leading = new Set<string>();
  timed('etcd-recipes:election:campaign', (c, seconds) => {
    if (c.error !== undefined || !c.result) {
      sink.record(M.campaignDuration, seconds, named(c.name, outcome('error', c.error)));
      return;
    }
    sink.record(M.campaignDuration, seconds, named(c.name, outcome('elected')));
    leading.add(holdId(c.key, c.result.revision));
    sink.add(M.electionLeading, 1, named(c.name, {}));
  });
  const termEnded = (m: { name: string; key: string; revision: bigint }) => {
    if (leading.delete(holdId(m.key, m.revision))) sink.add(M.electionLeading, -1, named(m.name, {}));
  };
  on('etcd-recipes:election:deposed', (m) => {
    termEnded(m);
    sink.add(M.electionDeposed, 1, named(m.name, {}));
  });
  on('etcd-recipes:election:resigned', termEnded);
  on('etcd-recipes:election:leader', (m) => sink.add(M.electionLeaderChanged, 1, named(m.name, {})));

  // STM
  timed('etcd-recipes:stm', (c, seconds) => {
    const o =
      c.error === undefined
        ? outcome('commit')
        : errorType(c.error) === 'STM_CONFLICT'
          ? outcome('give_up')
          : outcome('error', c.error);
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
  timed('etcd-recipes:queue:dequeue', (c, seconds) => {
    const o = c.error === undefined ? outcome('dequeued') : outcome('error', c.error);
    sink.record(M.queueDequeueDuration, seconds, named(c.name, { 'etcd_recipes.recipe': c.recipe, ...o }));
  });
  timed('etcd-recipes:work-queue:claim', (c, seconds) => {
    const o = c.error === undefined ? outcome('claimed') : outcome('error', c.error);
    sink.record(M.workQueueClaimDuration, seconds, named(c.name, o));
  });
  end('etcd-recipes:work-queue:ack', (c) => {
    if (c.error === undefined) sink.add(M.workQueueAcked, 1, named(c.name, {}));
  });
  on('etcd-recipes:work-queue:release', (m) => sink.add(M.workQueueReleased, 1, named(m.name, {})));
  on('etcd-recipes:work-queue:retry', (m) => sink.add(M.workQueueRetried, 1, named(m.name, {})));
  on('etcd-recipes:work-queue:dead-letter', (m) =>
    sink.add(M.workQueueDeadLettered, 1, named(m.name, { 'etcd_recipes.reason': m.reason })),
  );

  // Watches, caches, services
  on('etcd-recipes:watch:reconnect', () => sink.add(M.watchReconnected, 1, none));
  on('etcd-recipes:watch:compacted', () => sink.add(M.watchCompacted, 1, none));
  on('etcd-recipes:prefix-cache:resync', () => sink.add(M.prefixCacheResynced, 1, none));
  on('etcd-recipes:service:lost', (m) => sink.add(M.serviceLost, 1, named(m.service, {})));
  on('etcd-recipes:service:re-registered', (m) => sink.add(M.serviceReregistered, 1, named(m.service, {})));

  return () => {
    for (const u of subs.splice(0)) u();
  };
}
