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

export { runSTM } from './recipes/stm.js';
export type { STMIsolation, STMOptions, STMTransaction, STMBackoff } from './recipes/stm.js';
