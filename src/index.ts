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

export { PrefixCache, CachedKeyValue } from './recipes/prefix-cache.js';
export type { PrefixCacheOptions, PrefixCacheWaitOptions, PrefixCacheChange, PrefixCacheResync, PrefixCacheEvents } from './recipes/prefix-cache.js';
export { ServiceRegistry, ServiceIdTakenError, DEFAULT_SERVICE_ROOT } from './recipes/service-registry.js';
export type { RegisterOptions, RegistrationUpdate, DisplacedInfo, ServiceRegistryEvents, ServiceMetadata } from './recipes/service-registry.js';
export { ServiceDiscovery } from './recipes/service-discovery.js';
export type { PickStrategy, ServiceDiscoveryOptions, ServiceInstance, ServiceChange, ServiceDiscoveryEvents } from './recipes/service-discovery.js';
