/*
 * The metrics the helper keeps, declared once. Names follow OpenTelemetry's
 * naming guidelines and semantic-convention style: a dotted namespace
 * (`etcd_recipes.`), durations as histograms in seconds (`s`) named
 * `….duration` (as `http.client.request.duration`), counts of events as
 * counters in a `{thing}` annotation unit named by the event (as
 * `jvm.class.loaded`), current amounts as up-down counters, and the
 * general `error.type` attribute on failures.
 */

/** How an instrument aggregates: OpenTelemetry's synchronous instrument kinds. */
export type InstrumentKind = 'counter' | 'updowncounter' | 'histogram';

/** One metric: its OpenTelemetry name, kind, unit (UCUM) and description. */
export interface MetricDefinition {
  /** The OpenTelemetry name, e.g. `etcd_recipes.lock.lost`. */
  readonly name: string;
  /** How it aggregates: counter, up-down counter or histogram. */
  readonly kind: InstrumentKind;
  /** The UCUM unit: `s` for durations, a `{thing}` annotation for counts. */
  readonly unit: string;
  /** What it measures, one sentence. */
  readonly description: string;
}

/** A definition maker per kind; names are given without the `etcd_recipes.` namespace. */
const define =
  (kind: InstrumentKind) =>
  (name: string, unit: string, description: string): MetricDefinition => ({
    name: `etcd_recipes.${name}`,
    kind,
    unit,
    description,
  });
const counter = define('counter');
const upDown = define('updowncounter');
const seconds = (name: string, description: string): MetricDefinition => define('histogram')(name, 's', description);

/** Every metric of {@link RecipeMetrics}, by key. */
export const RECIPE_METRICS = {
  /** Counter `etcd_recipes.session.created`. Sessions created (leases granted or adopted). */
  sessionCreated: counter('session.created', '{session}', 'Sessions created (leases granted or adopted).'),
  /**
   * Counter `etcd_recipes.session.renewed_late`. Keepalives acknowledged with less than half the TTL
   * left, or first after a reconnect (etcd_recipes.reason).
   */
  sessionRenewedLate: counter(
    'session.renewed_late',
    '{renewal}',
    'Keepalives acknowledged with less than half the TTL left, or first after a reconnect (etcd_recipes.reason).',
  ),
  /** Counter `etcd_recipes.session.lost`. Sessions whose lease was lost. */
  sessionLost: counter('session.lost', '{session}', 'Sessions whose lease was lost.'),
  /** Counter `etcd_recipes.session.closed`. Sessions closed. */
  sessionClosed: counter('session.closed', '{session}', 'Sessions closed.'),
  /** Up-down counter `etcd_recipes.session.active`. Sessions alive in this process. */
  sessionActive: upDown('session.active', '{session}', 'Sessions alive in this process.'),

  /**
   * Histogram (s) `etcd_recipes.lock.wait.duration`. Time from an acquire call to its outcome
   * (etcd_recipes.outcome: acquired, busy for a try that found it taken, error).
   */
  lockWaitDuration: seconds(
    'lock.wait.duration',
    'Time from an acquire call to its outcome ' +
      '(etcd_recipes.outcome: acquired, busy for a try that found it taken, error).',
  ),
  /**
   * Histogram (s) `etcd_recipes.lock.hold.duration`. Time a lock or permit was held
   * (etcd_recipes.outcome: released, lost).
   */
  lockHoldDuration: seconds(
    'lock.hold.duration',
    'Time a lock or permit was held (etcd_recipes.outcome: released, lost).',
  ),
  /** Up-down counter `etcd_recipes.lock.waiting`. Acquires in this process queued behind another holder now. */
  lockWaiting: upDown('lock.waiting', '{waiter}', 'Acquires in this process queued behind another holder now.'),
  /** Up-down counter `etcd_recipes.lock.held`. Locks and permits this process holds now. */
  lockHeld: upDown('lock.held', '{hold}', 'Locks and permits this process holds now.'),
  /** Counter `etcd_recipes.lock.lost`. Holds that ended without a release (session lost, key deleted). */
  lockLost: counter('lock.lost', '{hold}', 'Holds that ended without a release (session lost, key deleted).'),

  /**
   * Histogram (s) `etcd_recipes.election.campaign.duration`. Time from a campaign to its outcome
   * (etcd_recipes.outcome: elected, error).
   */
  campaignDuration: seconds(
    'election.campaign.duration',
    'Time from a campaign to its outcome (etcd_recipes.outcome: elected, error).',
  ),
  /** Up-down counter `etcd_recipes.election.leading`. Elections this process leads now. */
  electionLeading: upDown('election.leading', '{election}', 'Elections this process leads now.'),
  /** Counter `etcd_recipes.election.deposed`. Terms that ended without a resign. */
  electionDeposed: counter('election.deposed', '{term}', 'Terms that ended without a resign.'),
  /** Counter `etcd_recipes.election.leader.changed`. Leader changes seen by observers. */
  electionLeaderChanged: counter('election.leader.changed', '{change}', 'Leader changes seen by observers.'),

  /** Histogram (s) `etcd_recipes.stm.duration`. runSTM calls (etcd_recipes.outcome: commit, give_up, error). */
  stmDuration: seconds('stm.duration', 'runSTM calls (etcd_recipes.outcome: commit, give_up, error).'),
  /** Counter `etcd_recipes.stm.attempt.conflicted`. STM attempts whose commit conflicted. */
  stmAttemptConflicted: counter('stm.attempt.conflicted', '{attempt}', 'STM attempts whose commit conflicted.'),

  /** Counter `etcd_recipes.queue.enqueued`. Items enqueued (Queue, PriorityQueue) and jobs added (WorkQueue). */
  queueEnqueued: counter(
    'queue.enqueued',
    '{item}',
    'Items enqueued (Queue, PriorityQueue) and jobs added (WorkQueue).',
  ),
  /** Histogram (s) `etcd_recipes.queue.dequeue.duration`. Time from a dequeue call to its outcome. */
  queueDequeueDuration: seconds('queue.dequeue.duration', 'Time from a dequeue call to its outcome.'),
  /** Histogram (s) `etcd_recipes.work_queue.claim.duration`. Time from a claim call to its outcome. */
  workQueueClaimDuration: seconds('work_queue.claim.duration', 'Time from a claim call to its outcome.'),
  /** Counter `etcd_recipes.work_queue.acked`. Jobs acked. */
  workQueueAcked: counter('work_queue.acked', '{job}', 'Jobs acked.'),
  /** Counter `etcd_recipes.work_queue.released`. Claims given back. */
  workQueueReleased: counter('work_queue.released', '{job}', 'Claims given back.'),
  /** Counter `etcd_recipes.work_queue.retried`. Jobs claimed again after a claim ended without an ack. */
  workQueueRetried: counter('work_queue.retried', '{job}', 'Jobs claimed again after a claim ended without an ack.'),
  /** Counter `etcd_recipes.work_queue.dead_lettered`. Jobs moved to the dead letters. */
  workQueueDeadLettered: counter('work_queue.dead_lettered', '{job}', 'Jobs moved to the dead letters.'),

  /** Counter `etcd_recipes.watch.reconnected`. Watch streams re-opened after breaking. */
  watchReconnected: counter('watch.reconnected', '{reconnect}', 'Watch streams re-opened after breaking.'),
  /** Counter `etcd_recipes.watch.compacted`. Watches whose start revision was compacted away. */
  watchCompacted: counter('watch.compacted', '{watch}', 'Watches whose start revision was compacted away.'),
  /** Counter `etcd_recipes.prefix_cache.resynced`. PrefixCache re-lists after a compaction. */
  prefixCacheResynced: counter('prefix_cache.resynced', '{resync}', 'PrefixCache re-lists after a compaction.'),

  /** Counter `etcd_recipes.service.lost`. Service registrations whose lease was lost. */
  serviceLost: counter('service.lost', '{registration}', 'Service registrations whose lease was lost.'),
  /** Counter `etcd_recipes.service.reregistered`. Service registrations written again under a new lease. */
  serviceReregistered: counter(
    'service.reregistered',
    '{registration}',
    'Service registrations written again under a new lease.',
  ),
} as const satisfies Record<string, MetricDefinition>;

/** A key of {@link RECIPE_METRICS}. */
export type RecipeMetricKey = keyof typeof RECIPE_METRICS;

/**
 * Bucket boundaries of the duration histograms, in seconds: OpenTelemetry's
 * advice for HTTP durations, extended to 5 minutes because a lock or a
 * campaign can wait that long.
 */
export const DEFAULT_DURATION_BUCKETS: readonly number[] = [
  0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 300,
];

/**
 * The Prometheus name of a metric, by OpenTelemetry's Prometheus
 * compatibility rules: dots become underscores, the unit is appended
 * (`_seconds`; `{…}` annotations are dropped) and counters end in `_total`.
 */
export function prometheusName(def: MetricDefinition): string {
  let name = def.name.replace(/[^a-zA-Z0-9_:]/g, '_');
  if (def.unit === 's') name += '_seconds';
  if (def.kind === 'counter') name += '_total';
  return name;
}

/** An attribute's Prometheus label name (dots become underscores). */
export function prometheusLabel(attribute: string): string {
  return attribute.replace(/[^a-zA-Z0-9_]/g, '_');
}
