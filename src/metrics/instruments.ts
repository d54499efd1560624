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
  readonly name: string;
  readonly kind: InstrumentKind;
  readonly unit: string;
  readonly description: string;
}

const counter = (name: string, unit: string, description: string): MetricDefinition => ({ name, kind: 'counter', unit, description });
const upDown = (name: string, unit: string, description: string): MetricDefinition => ({ name, kind: 'updowncounter', unit, description });
const seconds = (name: string, description: string): MetricDefinition => ({ name, kind: 'histogram', unit: 's', description });

/** Every metric of {@link RecipeMetrics}, by key. */
export const RECIPE_METRICS = {
  sessionCreated: counter('etcd_recipes.session.created', '{session}', 'Sessions created (leases granted or adopted).'),
  sessionRenewedLate: counter('etcd_recipes.session.renewed_late', '{renewal}',
    'Keepalives acknowledged with less than half the TTL left, or first after a reconnect (etcd_recipes.reason).'),
  sessionLost: counter('etcd_recipes.session.lost', '{session}', 'Sessions whose lease was lost.'),
  sessionClosed: counter('etcd_recipes.session.closed', '{session}', 'Sessions closed.'),
  sessionActive: upDown('etcd_recipes.session.active', '{session}', 'Sessions alive in this process.'),

  lockWaitDuration: seconds('etcd_recipes.lock.wait.duration',
    'Time from an acquire call to its outcome (etcd_recipes.outcome: acquired, busy for a try that found it taken, error).'),
  lockHoldDuration: seconds('etcd_recipes.lock.hold.duration', 'Time a lock or permit was held (etcd_recipes.outcome: released, lost).'),
  lockWaiting: upDown('etcd_recipes.lock.waiting', '{waiter}', 'Acquires in this process queued behind another holder now.'),
  lockHeld: upDown('etcd_recipes.lock.held', '{hold}', 'Locks and permits this process holds now.'),
  lockLost: counter('etcd_recipes.lock.lost', '{hold}', 'Holds that ended without a release (session lost, key deleted).'),

  campaignDuration: seconds('etcd_recipes.election.campaign.duration',
    'Time from a campaign to its outcome (etcd_recipes.outcome: elected, error).'),
  electionLeading: upDown('etcd_recipes.election.leading', '{election}', 'Elections this process leads now.'),
  electionDeposed: counter('etcd_recipes.election.deposed', '{term}', 'Terms that ended without a resign.'),
  electionLeaderChanged: counter('etcd_recipes.election.leader.changed', '{change}', 'Leader changes seen by observers.'),

  stmDuration: seconds('etcd_recipes.stm.duration', 'runSTM calls (etcd_recipes.outcome: commit, give_up, error).'),
  stmAttemptConflicted: counter('etcd_recipes.stm.attempt.conflicted', '{attempt}', 'STM attempts whose commit conflicted.'),

  queueEnqueued: counter('etcd_recipes.queue.enqueued', '{item}', 'Items enqueued (Queue, PriorityQueue) and jobs added (WorkQueue).'),
  queueDequeueDuration: seconds('etcd_recipes.queue.dequeue.duration', 'Time from a dequeue call to its outcome.'),
  workQueueClaimDuration: seconds('etcd_recipes.work_queue.claim.duration', 'Time from a claim call to its outcome.'),
  workQueueAcked: counter('etcd_recipes.work_queue.acked', '{job}', 'Jobs acked.'),
  workQueueReleased: counter('etcd_recipes.work_queue.released', '{job}', 'Claims given back.'),
  workQueueRetried: counter('etcd_recipes.work_queue.retried', '{job}', 'Jobs claimed again after a claim ended without an ack.'),
  workQueueDeadLettered: counter('etcd_recipes.work_queue.dead_lettered', '{job}', 'Jobs moved to the dead letters.'),

  watchReconnected: counter('etcd_recipes.watch.reconnected', '{reconnect}', 'Watch streams re-opened after breaking.'),
  watchCompacted: counter('etcd_recipes.watch.compacted', '{watch}', 'Watches whose start revision was compacted away.'),
  prefixCacheResynced: counter('etcd_recipes.prefix_cache.resynced', '{resync}', 'PrefixCache re-lists after a compaction.'),

  serviceLost: counter('etcd_recipes.service.lost', '{registration}', 'Service registrations whose lease was lost.'),
  serviceReregistered: counter('etcd_recipes.service.reregistered', '{registration}', 'Service registrations written again under a new lease.'),
} as const satisfies Record<string, MetricDefinition>;

/** A key of {@link RECIPE_METRICS}. */
export type RecipeMetricKey = keyof typeof RECIPE_METRICS;

/**
 * Bucket boundaries of the duration histograms, in seconds: OpenTelemetry's
 * advice for HTTP durations, extended to 5 minutes because a lock or a
 * campaign can wait that long.
 */
export const DEFAULT_DURATION_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60, 300];

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
