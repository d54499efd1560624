import { EventEmitter } from 'node:events';
import { ClientClosedError, type Namespace } from 'etcd3';
import { delay, linkSignals, raceAbort } from '../../core/abort.js';
import { publish } from '../../core/diagnostics.js';
import { InvalidArgumentError, isRecipeError, ServiceIdTakenError, SessionExpiredError } from '../../core/errors.js';
import { cmp, op, range, rangeAt, txn, type Compare, type KeyValue } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { isTransient, retrying } from '../../core/retry.js';
import { createOwnedSession, type Session } from '../../core/session.js';
import { checkBoolean, checkClient, checkInteger, checkOptions, checkSignal } from '../../core/validate.js';
import { openWatch, type WatchEvent, type WatchHandle } from '../../core/watch-hub.js';
import { emitSafely } from '../../core/events.js';
import { ChangeWatch } from '../../core/wait.js';
import { checkGuard, resolveGuard, type GuardedWriteOptions } from '../../core/guard.js';

const log = logger('service-registry');

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

// ---------------------------------------------------------------------------
// The key layout, shared with ServiceDiscovery.

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

function checkNonEmptyString(value: unknown, argument: string): asserts value is string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(
      argument,
      `must be a non-empty string, got ${typeof value === 'string' ? '""' : value === null ? 'null' : typeof value}`,
    );
  }
}

function checkMetadata(value: unknown, argument: string): void {
  if (value === undefined) return;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidArgumentError(
      argument,
      `must be a plain object or undefined, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`,
    );
  }
  try {
    JSON.stringify(value);
  } catch (err) {
    throw new InvalidArgumentError(argument, `must be JSON-serialisable: ${(err as Error).message}`);
  }
}

/** The stored value: `{"address","metadata","registeredAt"}`, with Go's endpoint fields first when asked. */
function encodeValue(address: string, metadata: object, registeredAt: Date, etcdEndpoints: boolean): string {
  const ours = { address, metadata, registeredAt: registeredAt.toISOString() };
  return JSON.stringify(etcdEndpoints ? { Op: 0, Addr: address, Metadata: metadata, ...ours } : ours);
}

const REGISTER_RETRY_MS = 30_000;

const leaseIs = (key: string, leaseId: string): Compare => ({ key, target: 'Lease', result: '==', value: leaseId });

/**
 * A service instance's registration: the key `<root><service>/<id>`
 * (default root `services/`) holding JSON `{"address", "metadata",
 * "registeredAt"}`, attached to a lease that the registry keeps alive, as a
 * heartbeat: if the process dies, etcd deletes the key after the TTL.
 *
 * If the lease is lost anyway (etcd unreachable for longer than the TTL), it
 * emits `lost`, and registers again under a new lease once etcd is back
 * (`re-registered`). `deregister()` removes the key at once.
 *
 * ```ts
 * const reg = await ServiceRegistry.register(client, {
 *   service: 'login', id: 'login-1', address: '10.0.0.7:8008', metadata: { zone: 'a' }, ttl: 10,
 * });
 * reg.on('lost', (err) => log.warn(err.message));
 * process.on('SIGTERM', () => void reg.deregister());
 * ```
 */
export class ServiceRegistry<M extends object = ServiceMetadata>
  extends EventEmitter<ServiceRegistryEvents>
  implements AsyncDisposable
{
  /** The etcd3 client (or namespace). */
  readonly client: Namespace;
  /** The service's name. */
  readonly service: string;
  /** The instance's ID. */
  readonly id: string;
  /** The root prefix of the service directory. */
  readonly root: string;
  /** The registration key: `<root><service>/<id>`. */
  readonly key: string;
  /** The lease TTL in seconds, as asked for. */
  readonly ttl: number;

  readonly #replace: boolean;
  readonly #waitForStale: boolean;
  readonly #etcdEndpoints: boolean;
  #address: string;
  #metadata: M;
  #registeredAt = new Date();
  #session: Session | undefined;
  /** Mod revision of our last write of the key. */
  #revision = 0n;
  #registered = false;
  /** Leases of our earlier registrations: a key still attached to one of them is ours to take over. */
  readonly #oldLeases: string[] = [];
  #keyWatch: WatchHandle | undefined;
  #verifying = false;
  #reregistering: Promise<void> | undefined;
  readonly #stop = new AbortController();
  #deregistering: Promise<void> | undefined;
  #displaced = false;

  private constructor(client: Namespace, options: Required<Omit<RegisterOptions<M>, 'signal'>>) {
    super();
    this.client = client;
    this.service = options.service;
    this.id = options.id;
    this.root = options.root;
    this.key = `${servicePrefix(options.root, options.service)}${options.id}`;
    this.ttl = options.ttl;
    this.#replace = options.replace;
    this.#waitForStale = options.waitForStale;
    this.#etcdEndpoints = options.etcdEndpoints;
    this.#address = options.address;
    this.#metadata = options.metadata;
  }

  /**
   * Registers an instance and keeps it registered until `deregister()`.
   * Resolves once the key is written.
   * @throws InvalidArgumentError on bad input, before anything is written
   * @throws ServiceIdTakenError (code `SERVICE_ID_TAKEN`) if another live
   *   instance holds the ID and `replace` is not set; nothing is left behind
   */
  static async register<M extends object = ServiceMetadata>(
    client: Namespace,
    options: RegisterOptions<M>,
  ): Promise<ServiceRegistry<M>> {
    checkClient(client);
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
      signal,
    } = options;
    checkInteger(ttl, 'options.ttl', 1, 9_000_000_000);
    checkRoot(root);
    checkBoolean(options.replace, 'options.replace');
    checkBoolean(options.waitForStale, 'options.waitForStale');
    checkBoolean(options.etcdEndpoints, 'options.etcdEndpoints');
    checkSignal(signal);
    signal?.throwIfAborted();

    const reg = new ServiceRegistry<M>(client, {
      service: options.service,
      id: options.id,
      address: options.address,
      metadata: options.metadata ?? ({} as M),
      ttl,
      root,
      replace,
      waitForStale,
      etcdEndpoints,
    });
    // A member failing over can stall a fresh lease's first keepalive past its TTL: such
    // transient failures (and the session loss they cause) are retried, for up to 30 s.
    const started = performance.now();
    let backoff = 50;
    for (;;) {
      try {
        await reg.#registerOnce(signal);
        break;
      } catch (err) {
        if (
          signal?.aborted ||
          !(isTransient(err) || isRecipeError(err, 'SESSION_EXPIRED')) ||
          performance.now() - started + backoff > REGISTER_RETRY_MS
        )
          throw err;
        log('%s: registration failed (%s); retrying in %d ms', reg.key, (err as Error).message, backoff);
        await delay(backoff, signal);
        backoff = Math.min(backoff * 2, 1000);
      }
    }
    log('%s registered (lease %s, revision %s)', reg.key, reg.#session?.leaseHex, reg.#revision);
    return reg;
  }

  /** True while the key is written under our live lease, as far as we know. */
  get registered(): boolean {
    return this.#registered;
  }

  /** The current session (lease), or undefined while re-registering. */
  get session(): Session | undefined {
    return this.#registered ? this.#session : undefined;
  }

  /** The current lease ID (decimal string), or undefined while not registered. */
  get leaseId(): string | undefined {
    return this.session?.leaseId;
  }

  /** The revision of our last write of the key (registration or update). */
  get revision(): bigint {
    return this.#revision;
  }

  /** The address currently registered (or to be registered again). */
  get address(): string {
    return this.#address;
  }

  /** The metadata currently registered (or to be registered again). */
  get metadata(): M {
    return this.#metadata;
  }

  /** When the current registration was written (set anew by each re-registration). */
  get registeredAt(): Date {
    return this.#registeredAt;
  }

  /**
   * Changes the address and/or metadata. Written at once if registered
   * (guarded by our lease, so it never overwrites another instance's key);
   * while re-registering, the new values are used when the key is written
   * again.
   * @throws InvalidArgumentError on bad input, or after `deregister()` or displacement
   */
  async update(changes: RegistrationUpdate<M>, options: GuardedWriteOptions = {}): Promise<void> {
    checkOptions(changes, 'changes');
    if (changes === undefined)
      throw new InvalidArgumentError('changes', 'must be an object with address and/or metadata');
    if (changes.address !== undefined) checkNonEmptyString(changes.address, 'changes.address');
    checkMetadata(changes.metadata, 'changes.metadata');
    checkOptions(options);
    checkSignal(options.signal);
    checkGuard(options.guard);
    if (this.#deregistering || this.#displaced) {
      throw new InvalidArgumentError(
        'this',
        `${this.key} is no longer registered (${this.#displaced ? 'displaced' : 'deregistered'})`,
      );
    }
    options.signal?.throwIfAborted();
    const before = { address: this.#address, metadata: this.#metadata };
    if (changes.address !== undefined) this.#address = changes.address;
    if (changes.metadata !== undefined) this.#metadata = changes.metadata;
    const session = this.#session;
    if (!this.#registered || !session) return;
    const guard = await resolveGuard(this.client, options.guard);
    // Re-sending is harmless: the same value put again under the same compares.
    const res = await retrying(
      () =>
        raceAbort(
          txn(
            this.client,
            [leaseIs(this.key, session.leaseId), ...guard.compares],
            [op.put(this.key, this.#value(), session.leaseId)],
            [op.range(this.key, { keysOnly: true }), ...guard.reads],
          ),
          options.signal,
        ),
      { signals: [options.signal, session.signal] },
    );
    if (!res.succeeded && rangeAt(res, 0).kvs[0]?.lease === session.leaseId && !guard.holds(res.responses.slice(1))) {
      ({ address: this.#address, metadata: this.#metadata } = before);
      throw guard.error(`${this.key}: update`);
    }
    if (res.succeeded) {
      if (res.revision > this.#revision) this.#revision = res.revision;
      log('%s updated (revision %s)', this.key, res.revision);
    } else {
      void this.#verify();
    }
  }

  /**
   * Removes the registration at once (revokes the lease, which deletes the
   * key) and stops re-registering. Idempotent; never rejects. If etcd is
   * unreachable, the key disappears when the lease expires.
   */
  deregister(): Promise<void> {
    this.#deregistering ??= (async () => {
      this.#stop.abort(new SessionExpiredError(`${this.key} deregistered`));
      this.#registered = false;
      this.#closeKeyWatch();
      await this.#reregistering?.catch(() => undefined);
      const session = this.#session;
      this.#session = undefined;
      // Revoking the live lease deletes the key in the same step. A key still attached to an
      // earlier lease of ours (lost while etcd was unreachable, not yet expired) goes with that one.
      const leases = [...this.#oldLeases];
      if (session && !session.expired) {
        session.orphan(); // stop keepalives; we revoke it ourselves, retrying, below
        leases.push(session.leaseId);
      }
      await Promise.all(leases.map((id) => this.#revoke(id)));
      log('%s deregistered', this.key);
      this.emit('deregistered');
    })();
    return this.#deregistering;
  }

  /** `await using reg = await ServiceRegistry.register(...)` deregisters at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.deregister();
  }

  // -------------------------------------------------------------------------

  /**
   * Revokes a lease, retrying transient failures (a member failing over can
   * stall a call for seconds) for as long as the lease could live anyway.
   */
  async #revoke(leaseId: string): Promise<void> {
    const bound = Math.min(this.ttl * 1000, 2000);
    try {
      await retrying(() => this.client.leaseClient.leaseRevoke({ ID: leaseId }, { deadline: Date.now() + bound }), {
        maxElapsedMs: this.ttl * 1000,
      });
      log('%s: revoked lease %s', this.key, BigInt(leaseId).toString(16));
    } catch (err) {
      // Not found: it expired already. Otherwise it expires by itself within the TTL.
      log('%s: revoke of lease %s failed: %s', this.key, BigInt(leaseId).toString(16), (err as Error).message);
    }
  }

  #value(): string {
    return encodeValue(this.#address, this.#metadata, this.#registeredAt, this.#etcdEndpoints);
  }

  /**
   * A new session, then the create-if-absent Txn. On any failure the session
   * is closed (its lease revoked), so nothing stays behind.
   */
  async #registerOnce(signal: AbortSignal | undefined): Promise<void> {
    // Not Session.create's own signal: if we give up while the grant is in flight, the lease it
    // lands with must still be revoked, so we keep hold of the pending session and close it.
    const creating = createOwnedSession(this.client, { ttl: this.ttl });
    let session: Session;
    try {
      session = await raceAbort(creating, signal, this.#stop.signal);
    } catch (err) {
      creating
        .then(
          (s) => s.close(),
          () => undefined,
        )
        .catch(() => undefined);
      throw err;
    }
    const linked = linkSignals(signal, session.signal, this.#stop.signal);
    let claiming: Promise<unknown> = Promise.resolve();
    try {
      this.#registeredAt = new Date();
      const claim = this.#claim(session, linked.signal);
      claiming = claim;
      const revision = await raceAbort(claim, linked.signal);
      this.#session = session;
      this.#revision = revision;
      this.#registered = true;
      session.once('lost', (err) => this.#onLost(session, err));
      if (session.expired) {
        // Lost between the Txn's reply and here: the event has already been emitted.
        this.#onLost(session, session.signal.reason as SessionExpiredError);
        return;
      }
      this.#watchKey(session, revision);
    } catch (err) {
      // Revoke only after the Txn settled: a late-landing put must go with the lease.
      await claiming.catch(() => undefined);
      await session.close();
      throw err;
    } finally {
      linked.dispose();
    }
  }

  /**
   * Waits for `holder` (the key as another lease holds it) to go, bounded by
   * that lease's remaining TTL plus 2.5 s: true if it went (stale), false
   * if it is still there (its lease is kept alive: a live instance).
   */
  async #expiredInTime(holder: KeyValue, signal: AbortSignal): Promise<boolean> {
    if (holder.lease === '0') return false;
    const ttl = await retrying(() => this.client.leaseClient.leaseTimeToLive({ ID: holder.lease }), {
      signals: [signal],
    }).then(
      (r) => Number(r.TTL),
      () => 0,
    );
    if (ttl <= 0) return true;
    log('%s: held by lease %s (%d s left); waiting for it to expire', this.key, BigInt(holder.lease).toString(16), ttl);
    // etcd reports whole seconds, rounded down, and revokes expired leases on a timer of its own: allow for both.
    const bounded = linkSignals(signal, AbortSignal.timeout(ttl * 1000 + 2500));
    try {
      const target = { kind: 'key' as const, key: Buffer.from(this.key), createRevision: holder.createRevision };
      const watch = await ChangeWatch.open(this.client, target, bounded.signal, holder.modRevision + 1n);
      try {
        await watch.untilChanged(bounded.signal);
        return true;
      } finally {
        watch.close();
      }
    } catch (err) {
      signal.throwIfAborted();
      if ((err as Error)?.name === 'TimeoutError') return false;
      throw err;
    } finally {
      bounded.dispose();
    }
  }

  /** Writes the key under `session`'s lease; returns the revision of the write. */
  async #claim(session: Session, signal: AbortSignal): Promise<bigint> {
    const leaseId = session.leaseId;
    for (let attempt = 0; attempt < 100; attempt++) {
      const res = await retrying(
        () =>
          txn(
            this.client,
            [cmp.create(this.key, '==', 0n)],
            [op.put(this.key, this.#value(), leaseId)],
            [op.range(this.key)],
          ),
        { signals: [signal], maxElapsedMs: Infinity },
      );
      if (res.succeeded) return res.revision;
      const holder: KeyValue | undefined = rangeAt(res, 0).kvs[0];
      if (!holder) continue; // deleted in between
      // Our own Txn whose reply was lost and retried, or our own earlier lease's key, or asked to replace.
      const ours = holder.lease === leaseId;
      const oldLease = this.#oldLeases.includes(holder.lease);
      if (ours) return holder.modRevision;
      if (!ours && !oldLease && !this.#replace) {
        if (this.#waitForStale && (await this.#expiredInTime(holder, signal))) continue;
        throw new ServiceIdTakenError(this.key, holder.lease);
      }
      const taken = await retrying(
        () =>
          txn(this.client, [cmp.mod(this.key, '==', holder.modRevision)], [op.put(this.key, this.#value(), leaseId)]),
        { signals: [signal], maxElapsedMs: Infinity },
      );
      if (taken.succeeded) {
        log(
          '%s: took over the key from %s lease %s',
          this.key,
          oldLease ? 'our earlier' : "another instance's",
          holder.lease === '0' ? 'none' : BigInt(holder.lease).toString(16),
        );
        if (oldLease) void this.client.leaseClient.leaseRevoke({ ID: holder.lease }).catch(() => undefined);
        return taken.revision;
      }
    }
    throw new Error(`${this.key}: the key kept changing while registering`);
  }

  #onLost(session: Session, err: SessionExpiredError): void {
    if (session !== this.#session || this.#stop.signal.aborted || this.#displaced) return;
    this.#registered = false;
    this.#closeKeyWatch();
    this.#oldLeases.push(session.leaseId);
    if (this.#oldLeases.length > 4) this.#oldLeases.shift();
    log('%s: lease %s lost (%s); re-registering', this.key, session.leaseHex, err.message);
    this.#safeEmit('lost', err);
    publish('serviceLost', () => ({
      service: this.service,
      id: this.id,
      key: this.key,
      leaseId: session.leaseId,
      error: err,
    }));
    this.#reregistering ??= this.#reregister().finally(() => {
      this.#reregistering = undefined;
    });
  }

  /** Registers again with a new lease, retrying until it works or `deregister()`. */
  async #reregister(): Promise<void> {
    const stop = this.#stop.signal;
    let backoff = 100;
    let reportedTaken = false;
    while (!stop.aborted) {
      try {
        await this.#registerOnce(stop);
        if (stop.aborted) return; // deregister() closes the new session
        const session = this.#session!;
        log('%s re-registered (lease %s, revision %s)', this.key, session.leaseHex, this.#revision);
        this.#safeEmit('re-registered', { leaseId: session.leaseId, revision: this.#revision });
        publish('serviceReregistered', () => ({
          service: this.service,
          id: this.id,
          key: this.key,
          leaseId: session.leaseId,
          revision: this.#revision,
        }));
        return;
      } catch (err) {
        if (stop.aborted) return;
        if (
          err instanceof ClientClosedError ||
          isRecipeError(err, 'CLOSED') ||
          /client was already closed/i.test((err as Error).message)
        ) {
          // The application closed the client without deregistering: nothing more we can do.
          log('%s: client closed; giving up re-registering', this.key);
          this.#emitError(err as Error);
          return;
        }
        if (err instanceof ServiceIdTakenError) {
          if (!reportedTaken) this.#emitError(err);
          reportedTaken = true;
        } else if (!isTransient(err) && !isRecipeError(err, 'SESSION_EXPIRED')) {
          this.#emitError(err as Error);
        }
        log('%s: re-registration failed (%s); retrying in %d ms', this.key, (err as Error).message, backoff);
        await delay(backoff, stop).catch(() => undefined);
        backoff = Math.min(backoff * 2, 2000);
      }
    }
  }

  /** Watches our own key, to notice a delete or a takeover while our lease lives. */
  #watchKey(session: Session, revision: bigint): void {
    this.#closeKeyWatch();
    const onEvents = (events: WatchEvent[]) => {
      if (this.#session !== session || !this.#registered) return;
      if (events.some((e) => e.type === 'delete' || e.kv.lease !== session.leaseId)) void this.#verify();
    };
    const onEnd = () => {
      if (this.#session === session && this.#registered) void this.#verify();
    };
    openWatch(
      this.client,
      { key: Buffer.from(this.key), startRevision: revision + 1n },
      { onEvents, onEnd },
      session.signal,
    ).then(
      (handle) => {
        if (this.#session === session && this.#registered && !this.#keyWatch) this.#keyWatch = handle;
        else handle.close();
      },
      (err: unknown) => {
        if (this.#session === session && this.#registered && !session.expired) {
          log('%s: watch on own key failed (%s); checking', this.key, (err as Error).message);
          void this.#verify();
        }
      },
    );
  }

  #closeKeyWatch(): void {
    this.#keyWatch?.close();
    this.#keyWatch = undefined;
  }

  /**
   * Something happened to our key: read it. Still ours → watch again. Taken
   * by another lease → displaced. Gone while our lease lives → displaced;
   * gone with our lease → lost (re-register).
   */
  async #verify(): Promise<void> {
    if (this.#verifying) return;
    this.#verifying = true;
    const session = this.#session;
    try {
      if (!session || !this.#registered) return;
      const res = await retrying(() => range(this.client, this.key), {
        signals: [session.signal, this.#stop.signal],
        maxElapsedMs: Infinity,
      });
      if (this.#session !== session || !this.#registered) return;
      const kv = res.kvs[0];
      if (kv && kv.lease === session.leaseId) {
        this.#closeKeyWatch();
        this.#watchKey(session, res.revision);
        return;
      }
      if (!kv) {
        const ttl = await retrying(() => this.client.leaseClient.leaseTimeToLive({ ID: session.leaseId }), {
          signals: [session.signal, this.#stop.signal],
          maxElapsedMs: Infinity,
        });
        if (this.#session !== session || !this.#registered) return;
        if (!(Number(ttl.TTL) > 0)) {
          // Our lease is gone on the server although the session has not noticed yet: that is a loss.
          const err = new SessionExpiredError(`${this.key}: lease ${session.leaseHex} expired on the server`);
          session.orphan();
          this.#onLost(session, err);
          return;
        }
      }
      this.#displace({ reason: kv ? 'replaced' : 'deleted', leaseId: kv?.lease });
    } catch (err) {
      log('%s: checking own key failed: %s', this.key, (err as Error).message);
    } finally {
      this.#verifying = false;
    }
  }

  #displace(info: DisplacedInfo): void {
    this.#displaced = true;
    this.#registered = false;
    this.#closeKeyWatch();
    this.#stop.abort(new SessionExpiredError(`${this.key} displaced (${info.reason})`));
    const session = this.#session;
    log('%s displaced: %s', this.key, info.reason);
    // Our lease holds no key any more: revoke it (a replaced key is attached to the other lease and stays).
    void session?.close();
    this.#safeEmit('displaced', info);
  }

  #safeEmit<K extends keyof ServiceRegistryEvents>(event: K, ...args: ServiceRegistryEvents[K]): void {
    emitSafely(this, event as string, args);
  }

  #emitError(err: Error): void {
    this.#safeEmit('error', err);
  }
}
