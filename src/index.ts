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

export { RWMutex } from './recipes/rwmutex.js';
export type { RWLockOptions, RWLockHandle, RWLockMode } from './recipes/rwmutex.js';
export { Semaphore, MAX_PERMITS } from './recipes/semaphore.js';
export type { PermitOptions, PermitHandle, SemaphoreUsage } from './recipes/semaphore.js';
