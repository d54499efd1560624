import type { SessionExpiredError } from '../../core/errors.js';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Compare } from '../../core/kv.js';
import { checkBoolean, checkInteger, checkOptions, checkSignal } from '../../core/validate.js';

/*
 * The service directory's key layout and values, shared by ServiceRegistry
 * and ServiceDiscovery, and the registry's option and event types.
 */

/** The default root prefix of the service directory. */
export const DEFAULT_SERVICE_ROOT = 'services/';

/** JSON-serialisable metadata of a service instance (a plain object). */
export type ServiceMetadata = Record<string, unknown>;

/** Options of {@link ServiceRegistry.register}. */
export interface RegisterOptions<M extends object = ServiceMetadata> {
  /** The service's name: non-empty, no `/`. */
  service: string;
  /** The instance's ID, unique within the service: non-empty. */
  id: string;
  /** Where to reach the instance, e.g. `10.0.0.7:8008` or a URL: non-empty. */
  address: string;
  /** Anything else discoverers should know (version, zone, weight...): a JSON-serialisable object. Default `{}`. */
  metadata?: M;
  /** Lease TTL in whole seconds: how long after the instance dies its key disappears. Default 10. */
  ttl?: number;
  /** Root prefix of the service directory: `''` or ending with `/`. Default `'services/'`. */
  root?: string;
  /** Take over the ID if another live instance holds it (default false: fail with {@link ServiceIdTakenError}). */
  replace?: boolean;
  /**
   * When the ID is held by a registration that may be our own stale one (a
   * supervised restart within the old TTL), wait for it to expire instead of
   * failing at once: at most the holder lease's remaining TTL (plus 2.5 s).
   * A holder whose lease is kept alive meanwhile is live, and the call fails
   * with {@link ServiceIdTakenError}; a live instance is never displaced
   * (that is what `replace` does). Default false.
   */
  waitForStale?: boolean;
  /**
   * Also write the fields etcd's Go `client/v3/naming/endpoints` package
   * reads (`"Op":0,"Addr","Metadata"`), so that gRPC-Go clients resolving
   * `etcd:///<root><service>` find this instance. Default false.
   */
  etcdEndpoints?: boolean;
  /** Aborts the registration; nothing is left behind. */
  signal?: AbortSignal;
}

/** What {@link ServiceRegistry.update} may change. */
export interface RegistrationUpdate<M extends object = ServiceMetadata> {
  /** The new address; unchanged when absent. */
  address?: string;
  /** The new metadata, replacing the old as a whole; unchanged when absent. */
  metadata?: M;
}

/** Why a registration was displaced (see the `displaced` event). */
export interface DisplacedInfo {
  /** `'deleted'`: someone deleted the key; `'replaced'`: another instance took the ID (e.g. `replace: true`). */
  reason: 'deleted' | 'replaced';
  /** The lease of the instance that holds the key now (for `'replaced'`). */
  leaseId?: string;
}

/** Events of a {@link ServiceRegistry}. */
export interface ServiceRegistryEvents {
  /**
   * The lease was lost (etcd unreachable for longer than the TTL, or the
   * lease revoked): the key is, or will soon be, gone. The registry now
   * re-registers with a new lease as soon as etcd lets it.
   */
  lost: [err: SessionExpiredError];
  /** Registered again after `lost`, under a new lease. */
  're-registered': [
    info: {
      /** The new lease (decimal string). */
      leaseId: string;
      /** The revision of the new registration write. */
      revision: bigint;
    },
  ];
  /**
   * The key was deleted or taken over by someone else while our lease lived.
   * The registry stops (it revokes its lease and does not re-register): the
   * application decides what to do (exit, register under another ID...).
   */
  displaced: [info: DisplacedInfo];
  /** A failure while re-registering, which is retried. Only emitted when a listener exists. */
  error: [err: Error];
  /** `deregister()` finished. */
  deregistered: [];
}

/** @internal Throws unless `root` is '' or a string ending with '/'. */
export function checkRoot(root: unknown, argument = 'options.root'): asserts root is string {
  if (typeof root !== 'string' || (root !== '' && !root.endsWith('/'))) {
    throw new InvalidArgumentError(
      argument,
      `must be '' or a string ending with '/', got ${typeof root === 'string' ? JSON.stringify(root) : typeof root}`,
    );
  }
}

/** @internal Throws unless `service` is a non-empty string without '/'. */
export function checkServiceName(service: unknown, argument: string): asserts service is string {
  if (typeof service !== 'string' || service.length === 0) {
    throw new InvalidArgumentError(
      argument,
      `must be a non-empty string, got ${typeof service === 'string' ? '""' : typeof service}`,
    );
  }
  if (service.includes('/'))
    throw new InvalidArgumentError(argument, `must not contain '/', got ${JSON.stringify(service)}`);
}

/** @internal The prefix under which a service's instances live: `<root><service>/`. */
export function servicePrefix(root: string, service: string): string {
  return `${root}${service}/`;
}

/** @internal Throws unless `value` is a non-empty string. */
export function checkNonEmptyString(value: unknown, argument: string): asserts value is string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(
      argument,
      `must be a non-empty string, got ${typeof value === 'string' ? '""' : value === null ? 'null' : typeof value}`,
    );
  }
}

/** @internal Throws unless `value` is undefined or a JSON-serialisable plain object. */
export function checkMetadata(value: unknown, argument: string): void {
  if (value === undefined) return;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidArgumentError(
      argument,
      `must be a plain object or undefined, got ${
        value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value
      }`,
    );
  }
  try {
    JSON.stringify(value);
  } catch (err) {
    throw new InvalidArgumentError(argument, `must be JSON-serialisable: ${(err as Error).message}`);
  }
}

/** @internal The stored value: `{"address","metadata","registeredAt"}`, with Go's endpoint fields first when asked. */
export function encodeValue(address: string, metadata: object, registeredAt: Date, etcdEndpoints: boolean): string {
  const ours = { address, metadata, registeredAt: registeredAt.toISOString() };
  return JSON.stringify(etcdEndpoints ? { Op: 0, Addr: address, Metadata: metadata, ...ours } : ours);
}

/** @internal The compare "`key` is attached to lease `leaseId`". */
export const leaseIs = (key: string, leaseId: string): Compare => ({
  key,
  target: 'Lease',
  result: '==',
  value: leaseId,
});

/** @internal {@link RegisterOptions} checked (before anything is written), with their defaults. */
export function checkRegisterOptions<M extends object>(
  options: RegisterOptions<M> | undefined,
): Required<Omit<RegisterOptions<M>, 'signal'>> & { signal: AbortSignal | undefined } {
  if (options === undefined)
    throw new InvalidArgumentError('options', 'must be an object with service, id and address');
  checkOptions(options);
  checkServiceName(options.service, 'options.service');
  checkNonEmptyString(options.id, 'options.id');
  checkNonEmptyString(options.address, 'options.address');
  checkMetadata(options.metadata, 'options.metadata');
  const {
    ttl = 10,
    root = DEFAULT_SERVICE_ROOT,
    replace = false,
    waitForStale = false,
    etcdEndpoints = false,
  } = options;
  checkInteger(ttl, 'options.ttl', 1, 9_000_000_000);
  checkRoot(root);
  checkBoolean(options.replace, 'options.replace');
  checkBoolean(options.waitForStale, 'options.waitForStale');
  checkBoolean(options.etcdEndpoints, 'options.etcdEndpoints');
  checkSignal(options.signal);
  const { service, id, address, metadata = {} as M, signal } = options;
  return { service, id, address, metadata, ttl, root, replace, waitForStale, etcdEndpoints, signal };
}
