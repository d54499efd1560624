/**
 * etcd-recipes: distributed coordination recipes on etcd v3.
 * @packageDocumentation
 */
export {
  RecipeError, SessionExpiredError, LockNotHeldError, NotLeaderError, NoLeaderError, STMConflictError,
  InvalidArgumentError, TimeoutError, isRecipeError,
} from './core/errors.js';
export type { RecipeErrorCode } from './core/errors.js';
export { Session } from './core/session.js';
export type { SessionOptions, SessionEvents } from './core/session.js';
export type { HeldKey } from './core/holding.js';

export { Mutex, withLock } from './recipes/mutex.js';
export type { LockOptions, LockHandle, LockContext, WithLockOptions } from './recipes/mutex.js';

export { Queue } from './recipes/queue.js';
export type { QueueOptions, DequeueOptions, QueueItem } from './recipes/queue.js';
export { PriorityQueue, MAX_PRIORITY } from './recipes/priority-queue.js';
export { WorkQueue, DEFAULT_JOB_PRIORITY } from './recipes/work-queue.js';
export type { WorkQueueOptions, AddJobOptions, ClaimOptions, Job, WorkQueueStats, DeadJob } from './recipes/work-queue.js';
