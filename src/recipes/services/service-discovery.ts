import { EventEmitter } from 'node:events';
import type { Namespace } from 'etcd3';
import { AsyncQueue } from '../../core/async-queue.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { checkClient, checkInteger, checkOptions, checkSignal } from '../../core/validate.js';
import {
  PrefixCache,
  type CachedKeyValue,
  type PrefixCacheChange,
  type PrefixCacheWaitOptions,
} from '../prefix-cache.js';
import { checkRoot, checkServiceName, DEFAULT_SERVICE_ROOT, servicePrefix, type ServiceMetadata } from './layout.js';
import { emitSafely } from '../../core/events.js';

const log = logger('service-discovery');

/** The one key of a `lists()` queue. */
const LATEST = 'latest';

/** How {@link ServiceDiscovery.pick} chooses. */
export type PickStrategy = 'round-robin' | 'random';

/** Options of {@link ServiceDiscovery}. */
export interface ServiceDiscoveryOptions {
  /** Root prefix of the service directory: `''` or ending with `/`. Default `'services/'`. */
  root?: string;
  /** Default strategy of `pick()`. Default `'round-robin'`. */
  strategy?: PickStrategy;
  /** Keys per request when listing (see {@link PrefixCacheOptions}). Default 1000. */
  pageSize?: number;
}

/** One live instance of a service, as registered. Immutable: a change replaces the object. */
export interface ServiceInstance<M extends object = ServiceMetadata> {
  /** The service's name. */
  readonly service: string;
  /** The instance's ID (the key after `<root><service>/`). */
  readonly id: string;
  /** The registration key. */
  readonly key: string;
  /** Where to reach the instance. */
  readonly address: string;
  /** The instance's metadata (`{}` when none was registered). */
  readonly metadata: M;
  /** When the instance (re-)registered, if the value says. */
  readonly registeredAt: Date | undefined;
  /** The lease (decimal string) the registration is attached to; '0' for none. */
  readonly leaseId: string;
  /** Mod revision of the registration key. */
  readonly revision: bigint;
}

/** One change of a service's instances. */
export interface ServiceChange<M extends object = ServiceMetadata> {
  /** `'added'`, `'updated'` (new address, metadata or lease) or `'removed'`. */
  type: 'added' | 'updated' | 'removed';
  /** The instance now (for `'removed'`: as it was). */
  instance: ServiceInstance<M>;
  /** The instance before an update or removal. */
  previous: ServiceInstance<M> | undefined;
  /** Revision of the change (of the re-list, for changes found after compaction). */
  revision: bigint;
  /** True when found by a re-list after compaction (see {@link PrefixCacheChange.resync}). */
  resync: boolean;
}

/** Events of a {@link ServiceDiscovery}. */
export interface ServiceDiscoveryEvents<M extends object = ServiceMetadata> {
  /** An instance was added, updated or removed; `instances()` already reflects it. */
  change: [change: ServiceChange<M>];
  /** The first list is loaded and the watch is live. */
  ready: [];
  /** A failure being retried (see PrefixCache's `error`). Only emitted when a listener exists. */
  error: [err: Error];
  /** Closed. */
  closed: [];
}

/** The instance a key-value describes, or undefined if it does not parse as one. */
function parseInstance<M extends object>(
  service: string,
  prefixLength: number,
  kv: CachedKeyValue,
): ServiceInstance<M> | undefined {
  let v: unknown;
  try {
    v = JSON.parse(kv.value);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  // Our layout first; etcd's Go naming/endpoints layout ("Addr", "Metadata") as a fallback.
  const address = typeof o.address === 'string' ? o.address : typeof o.Addr === 'string' ? o.Addr : undefined;
  if (!address) return undefined;
  const metadata = (o.metadata ?? o.Metadata ?? {}) as M;
  let registeredAt: Date | undefined;
  if (typeof o.registeredAt === 'string') {
    const d = new Date(o.registeredAt);
    if (!Number.isNaN(d.getTime())) registeredAt = d;
  }
  return {
    service,
    id: kv.key.slice(prefixLength),
    key: kv.key,
    address,
    metadata,
    registeredAt,
    leaseId: kv.lease,
    revision: kv.modRevision,
  };
}

/**
 * The live instances of one service, kept current by a {@link PrefixCache}
 * over `<root><service>/`: additions and removals show up as they happen,
 * and the view survives reconnects and compaction.
 *
 * ```ts
 * const login = new ServiceDiscovery(client, 'login');
 * await login.ready();
 * const target = login.pick();                 // round-robin; undefined when none
 * login.on('change', (c) => console.log(c.type, c.instance.id));
 * for await (const instances of login) { ... } // the latest list after each change
 * await login.close();
 * ```
 *
 * Values that are not a registration (not JSON, no address) are ignored.
 * Registrations written by etcd's Go `naming/endpoints` manager
 * (`{"Op":0,"Addr":...,"Metadata":...}` under `<root><service>/`) are read too.
 */
export class ServiceDiscovery<M extends object = ServiceMetadata>
  extends EventEmitter<ServiceDiscoveryEvents<M>>
  implements AsyncIterable<ServiceInstance<M>[]>, AsyncDisposable
{
  /** The service's name. */
  readonly service: string;
  /** The prefix watched: `<root><service>/`. */
  readonly prefix: string;
  /** The underlying cache (read-only use). */
  readonly cache: PrefixCache;

  readonly #strategy: PickStrategy;
  readonly #instances = new Map<string, ServiceInstance<M>>();
  #sorted: ServiceInstance<M>[] | undefined;
  #lastPicked: string | undefined;
  /** The iterators of `lists()` (as methods, so that a discovery of a metadata subtype stays assignable). */
  readonly #lists = new Set<{ push(list: ServiceInstance<M>[], key: string): void; close(): void }>();

  /**
   * Starts watching at once; `await ready()` before the first `pick()`.
   * @param client - an etcd3 client or namespace
   * @param service - the service's name (non-empty, no `/`)
   * @param options - root prefix, pick strategy
   * @throws InvalidArgumentError on bad input
   */
  constructor(client: Namespace, service: string, options: ServiceDiscoveryOptions = {}) {
    super();
    checkClient(client);
    checkServiceName(service, 'service');
    checkOptions(options);
    const { root = DEFAULT_SERVICE_ROOT, strategy = 'round-robin', pageSize } = options;
    checkRoot(root);
    checkStrategy(strategy, 'options.strategy');
    if (pageSize !== undefined) checkInteger(pageSize, 'options.pageSize', 1, 100_000);
    this.service = service;
    this.prefix = servicePrefix(root, service);
    this.#strategy = strategy;
    this.cache = new PrefixCache(client, this.prefix, { pageSize });
    this.cache.on('ready', () => this.#load());
    this.cache.on('change', (c) => this.#onChange(c));
    this.cache.on('error', (err) => {
      emitSafely(this, 'error', err);
    });
    this.cache.on('closed', () => {
      for (const lists of [...this.#lists]) lists.close();
      this.emit('closed');
    });
  }

  /** True once loaded. */
  get isReady(): boolean {
    return this.cache.isReady;
  }

  /** Number of live instances. */
  get size(): number {
    return this.#instances.size;
  }

  /** The revision the view reflects (see {@link PrefixCache.revision}). */
  get revision(): bigint {
    return this.cache.revision;
  }

  /** Resolves once the first list is loaded and the watch is live (see {@link PrefixCache.ready}). */
  ready(options: PrefixCacheWaitOptions = {}): Promise<void> {
    return this.cache.ready(options);
  }

  /** The live instances, sorted by ID (a snapshot; empty before ready). */
  instances(): ServiceInstance<M>[] {
    return this.#sortedInstances().slice();
  }

  /** The instance with this ID, if live. */
  get(id: string): ServiceInstance<M> | undefined {
    return this.#instances.get(id);
  }

  /**
   * One live instance, or undefined if there is none. Round-robin walks the
   * instances in ID order, continuing after the last one picked, so it stays
   * fair while instances come and go; random picks uniformly.
   */
  pick(options: { strategy?: PickStrategy } = {}): ServiceInstance<M> | undefined {
    checkOptions(options);
    const strategy = options.strategy ?? this.#strategy;
    checkStrategy(strategy, 'options.strategy');
    const list = this.#sortedInstances();
    if (list.length === 0) return undefined;
    if (strategy === 'random') return list[Math.floor(Math.random() * list.length)];
    const last = this.#lastPicked;
    let i = 0;
    if (last !== undefined) {
      // First ID after the last one picked (binary search), wrapping around.
      let lo = 0;
      let hi = list.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (list[mid]!.id <= last) lo = mid + 1;
        else hi = mid;
      }
      i = lo === list.length ? 0 : lo;
    }
    const chosen = list[i]!;
    this.#lastPicked = chosen.id;
    return chosen;
  }

  /**
   * An async iterator of instance lists: the current list first (once
   * ready), then the latest list after each change. A slow consumer skips
   * intermediate lists (never an unbounded buffer). Ends when closed;
   * rejects with the signal's reason on abort.
   */
  lists(options: PrefixCacheWaitOptions = {}): AsyncIterableIterator<ServiceInstance<M>[]> {
    checkOptions(options);
    checkSignal(options.signal);
    // Keyed by one key: a list not yet taken is replaced by the latest.
    const lists = new AsyncQueue<ServiceInstance<M>[]>({
      signal: options.signal,
      onEnd: () => this.#lists.delete(lists),
    });
    if (this.cache.closed) lists.finish();
    else if (!lists.ended) this.#lists.add(lists);
    if (this.isReady) lists.push(this.instances(), LATEST);
    return lists;
  }

  /** `for await (const instances of discovery)`: see {@link ServiceDiscovery.lists}. */
  [Symbol.asyncIterator](): AsyncIterableIterator<ServiceInstance<M>[]> {
    return this.lists();
  }

  /** Stops watching; iterators end. Idempotent. */
  close(): Promise<void> {
    return this.cache.close();
  }

  /** `await using d = new ServiceDiscovery(...)` closes it at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // -------------------------------------------------------------------------

  #sortedInstances(): ServiceInstance<M>[] {
    this.#sorted ??= [...this.#instances.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return this.#sorted;
  }

  #load(): void {
    this.#instances.clear();
    let skipped = 0;
    for (const kv of this.cache.values()) {
      const inst = parseInstance<M>(this.service, this.prefix.length, kv);
      if (inst) this.#instances.set(inst.id, inst);
      else skipped++;
    }
    if (skipped) log('%s: ignored %d keys that are not registrations', this.prefix, skipped);
    this.#bump();
    emitSafely(this, 'ready');
  }

  #onChange(c: PrefixCacheChange): void {
    const id = c.key.slice(this.prefix.length);
    const previous = this.#instances.get(id);
    const instance = c.entry ? parseInstance<M>(this.service, this.prefix.length, c.entry) : undefined;
    if (c.entry && !instance) log('%s: ignoring %s: not a registration', this.prefix, c.key);
    if (!instance && !previous) return;
    if (instance) this.#instances.set(id, instance);
    else this.#instances.delete(id);
    this.#bump();
    const change: ServiceChange<M> = instance
      ? { type: previous ? 'updated' : 'added', instance, previous, revision: c.revision, resync: c.resync }
      : { type: 'removed', instance: previous!, previous, revision: c.revision, resync: c.resync };
    emitSafely(this, 'change', change);
  }

  #bump(): void {
    this.#sorted = undefined;
    for (const lists of this.#lists) lists.push(this.instances(), LATEST);
  }
}

function checkStrategy(value: unknown, argument: string): asserts value is PickStrategy {
  if (value !== 'round-robin' && value !== 'random') {
    throw new InvalidArgumentError(
      argument,
      `must be 'round-robin' or 'random', got ${typeof value === 'string' ? JSON.stringify(value) : typeof value}`,
    );
  }
}
