/**
 * etcd-recipes: distributed coordination recipes on etcd v3.
 * @packageDocumentation
 */
export {
  RecipeError,
  SessionExpiredError,
  LockNotHeldError,
  NotLeaderError,
  STMConflictError,
  InvalidArgumentError,
  ServiceIdTakenError,
  PermissionDeniedError,
  ClosedError,
  OutcomeUnknownError,
  InternalError,
  isRecipeError,
  RECIPE_ERROR_CODES,
} from './core/errors.js';
export type { RecipeErrorCode, RecipeErrorByCode } from './core/errors.js';
export { createClient, closeClient } from './core/client.js';
export type { WaitOptions } from './core/options.js';
export type { ClientOptions } from './core/client.js';
export { Session } from './core/session.js';
export type { SessionOptions, SessionEvents } from './core/session.js';
export type { HeldKey } from './core/holding.js';

export { Mutex, withLock } from './recipes/locks/mutex.js';
export type { LockOptions, LockHandle, LockContext, WithLockOptions } from './recipes/locks/mutex.js';

export { BarrierFullError } from './core/errors.js';
export { Barrier } from './recipes/barriers/barrier.js';
export type { BarrierHoldOptions, BarrierWaitOptions } from './recipes/barriers/barrier.js';
export { DoubleBarrier } from './recipes/barriers/double-barrier.js';
export type { DoubleBarrierOptions } from './recipes/barriers/double-barrier.js';

export { runSTM } from './recipes/stm/run.js';
export type { STMIsolation, STMOptions, STMTransaction, STMBackoff } from './recipes/stm/types.js';

export { Election, LeaderObserver, getLeader, observeLeader } from './recipes/election/election.js';
export type {
  CampaignOptions,
  LeaderInfo,
  LeaderState,
  ObserveOptions,
  ElectionEvents,
} from './recipes/election/election.js';
export { runAsLeader } from './recipes/election/run-as-leader.js';
export type { LeaderContext, RunAsLeaderOptions } from './recipes/election/run-as-leader.js';

export { PrefixCache, CachedKeyValue } from './recipes/prefix-cache.js';
export type {
  PrefixCacheOptions,
  PrefixCacheWaitOptions,
  PrefixCacheChange,
  PrefixCacheResync,
  PrefixCacheEvents,
} from './recipes/prefix-cache.js';
export { ServiceRegistry, DEFAULT_SERVICE_ROOT } from './recipes/services/service-registry.js';
export type {
  RegisterOptions,
  RegistrationUpdate,
  DisplacedInfo,
  ServiceRegistryEvents,
  ServiceMetadata,
} from './recipes/services/service-registry.js';
export { ServiceDiscovery } from './recipes/services/service-discovery.js';
export type {
  PickStrategy,
  ServiceDiscoveryOptions,
  ServiceInstance,
  ServiceChange,
  ServiceDiscoveryEvents,
} from './recipes/services/service-discovery.js';

export { RWMutex } from './recipes/locks/rwmutex.js';
export type { RWLockOptions, RWLockHandle, RWLockMode } from './recipes/locks/rwmutex.js';
export { Semaphore, MAX_PERMITS } from './recipes/locks/semaphore.js';
export type { PermitOptions, PermitHandle, SemaphoreUsage } from './recipes/locks/semaphore.js';

export { Queue } from './recipes/queues/queue.js';
export type { QueueOptions, DequeueOptions, EnqueueOptions, QueueItem } from './recipes/queues/queue.js';
export { PriorityQueue, MAX_PRIORITY } from './recipes/queues/priority-queue.js';
export { WorkQueue, DEFAULT_JOB_PRIORITY } from './recipes/queues/work-queue.js';
export type {
  WorkQueueOptions,
  AddJobOptions,
  GuardedWriteOptions,
  ClaimOptions,
  Job,
  JobHandler,
  WorkOptions,
  WorkQueueStats,
  DeadJob,
} from './recipes/queues/work-queue.js';
export type { Guard, GuardCompare } from './core/guard.js';

export { runWithSession } from './recipes/run-with-session.js';
export type { RunWithSessionOptions } from './recipes/run-with-session.js';
export { acquireAll, withLocks } from './recipes/locks/multi-lock.js';
export type { MultiLockHandle, MultiLockContext } from './recipes/locks/multi-lock.js';
export { MAX_PERMITS_PER_ACQUIRE } from './recipes/locks/semaphore.js';
export type { STMRangeItem } from './recipes/stm/types.js';
export { inspectLock, inspectSemaphore, inspectRWMutex } from './inspect/locks.js';
export type { LockInspection, SemaphoreInspection, RWMutexInspection, RWLockKey } from './inspect/locks.js';
export type { InspectOptions, InspectedKey } from './inspect/read.js';
export { inspectElection } from './inspect/election.js';
export type { ElectionInspection, Candidate as ElectionCandidate } from './inspect/election.js';
export { inspectQueue } from './inspect/queue.js';
export type { QueueInspection, QueueHead, QueueKind, InspectQueueOptions } from './inspect/queue.js';
export { inspectWorkQueue } from './inspect/work-queue.js';
export type { WorkQueueInspection, InspectedJob, ClaimedJob, InspectedDeadJob } from './inspect/work-queue.js';
export { inspectServices } from './inspect/services.js';
export type { ServicesInspection, InspectedInstance, InspectServicesOptions } from './inspect/services.js';
export { discoverRecipes, inspectRecipe } from './inspect/discover.js';
export type { RecipeKind, DiscoveredRecipe, DiscoverOptions, RecipeInspection } from './inspect/discover.js';
export { inspectStatus, watchStatus } from './inspect/status.js';
export type { StatusOptions, WatchStatusOptions } from './inspect/status.js';
export { formatStatus, formatInspection, inspectionJSON } from './inspect/format.js';
export type { FormatOptions } from './inspect/format.js';
export { startDashboard } from './dashboard/server.js';
export type { Dashboard, DashboardOptions, DashboardState } from './dashboard/server.js';
export { DIAGNOSTICS_CHANNELS, TRACING_CHANNELS, subscribeDiagnostics, subscribeTracing } from './core/diagnostics.js';
export type {
  DiagnosticsMessages,
  TracingContexts,
  DiagnosticsChannelName,
  TracingChannelName,
  TracingHandlers,
  SessionMessage,
  SessionRenewedLateMessage,
  SessionLostMessage,
  LockRecipe,
  LockTarget,
  LockAcquireContext,
  LockAcquireResult,
  LockWaitMessage,
  LockReleasedMessage,
  LockLostMessage,
  MultiLockAcquireContext,
  ElectionTarget,
  CampaignContext,
  ElectionDeposedMessage,
  ElectionResignedMessage,
  ElectionLeaderMessage,
  STMContext,
  STMAttemptContext,
  QueueRecipe,
  EnqueueContext,
  DequeueContext,
  JobMessage,
  JobClaimContext,
  JobAckContext,
  JobRetryMessage,
  JobDeadLetterMessage,
  WatchReconnectMessage,
  WatchCompactedMessage,
  PrefixCacheResyncMessage,
  ServiceMessage,
  ServiceLostMessage,
  ServiceReregisteredMessage,
} from './core/diagnostics.js';
export { RecipeMetrics } from './metrics/recipe-metrics.js';
export type { RecipeMetricsOptions, MetricSnapshot, CounterPoint, HistogramPoint } from './metrics/recipe-metrics.js';
export { RECIPE_METRICS, DEFAULT_DURATION_BUCKETS, prometheusName } from './metrics/instruments.js';
export type { MetricDefinition, InstrumentKind, RecipeMetricKey } from './metrics/instruments.js';
export type { MetricAttributes } from './metrics/recorder.js';
export type { PrometheusRegistryLike, PrometheusMetricLike, PrometheusValue } from './metrics/prometheus.js';
export type { OpenTelemetryMeterLike, OpenTelemetryInstrumentOptions } from './metrics/opentelemetry.js';
