import { EventEmitter } from 'node:events';
import type { Namespace } from 'etcd3';
import { isClientClosed } from '../../core/etcd-errors.js';
import { linkSignals, raceAbort } from '../../core/abort.js';
import { publish } from '../../core/diagnostics.js';
import { InvalidArgumentError, isRecipeError, ServiceIdTakenError, SessionExpiredError } from '../../core/errors.js';
import { op, rangeAt, txn } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { retrying } from '../../core/retry.js';
import { isTransient } from '../../core/etcd-errors.js';
import { createOwnedSession, type Session } from '../../core/session.js';
import { checkClient, checkOptions, checkSignal } from '../../core/validate.js';
import { emitSafely } from '../../core/events.js';
import { checkGuard, resolveGuard, type GuardedWriteOptions } from '../../core/guard.js';
import { type Claim, claimKey, revokeLease } from './claim.js';
import { KeyWatch } from './key-watch.js';
import {
  checkMetadata,
  checkRegisterOptions,
  checkNonEmptyString,
  type DisplacedInfo,
  encodeValue,
  leaseIs,
  type RegisterOptions,
  type RegistrationUpdate,
  type ServiceMetadata,
  type ServiceRegistryEvents,
  servicePrefix,
} from './layout.js';

const log = logger('service-registry');

export {
  DEFAULT_SERVICE_ROOT,
  type DisplacedInfo,
  type RegisterOptions,
  type RegistrationUpdate,
  type ServiceMetadata,
  type ServiceRegistryEvents,
} from './layout.js';

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

  readonly #etcdEndpoints: boolean;
  /** What our registration writes (see claimKey). */
  readonly #claim: Claim;
  #address: string;
  #metadata: M;
  #registeredAt = new Date();
  #session: Session | undefined;
  /** Mod revision of our last write of the key. */
  #revision = 0n;
  #registered = false;
  /** Leases of our earlier registrations: a key still attached to one of them is ours to take over. */
  readonly #oldLeases: string[] = [];
  #keyWatch: KeyWatch | undefined;
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
    this.#etcdEndpoints = options.etcdEndpoints;
    const value = () => this.#value();
    this.#claim = { ...options, client, key: this.key, value, oldLeases: this.#oldLeases };
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
    const { signal, ...normalized } = checkRegisterOptions(options);
    signal?.throwIfAborted();
    const reg = new ServiceRegistry<M>(client, normalized);
    // A member failing over can stall a fresh lease's first keepalive past its TTL: such
    // transient failures (and the session loss they cause) are retried, for up to 30 s.
    await retrying(() => reg.#registerOnce(signal), {
      signals: [signal],
      retryIf: (err) => isTransient(err) || isRecipeError(err, 'SESSION_EXPIRED'),
      onRetry: (err) => log('%s: registration failed (%s); retrying', reg.key, (err as Error).message),
    });
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
      void this.#keyWatch?.verify();
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
      await Promise.all(leases.map((id) => revokeLease(this.client, id, this.ttl, this.key)));
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
      const claim = claimKey(this.#claim, session.leaseId, linked.signal);
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
      this.#closeKeyWatch();
      this.#keyWatch = new KeyWatch(this.client, this.key, session, this.#stop.signal, {
        lost: (err) => this.#onLost(session, err),
        displaced: (info) => this.#displace(info),
      });
      this.#keyWatch.start(revision);
    } catch (err) {
      // Revoke only after the Txn settled: a late-landing put must go with the lease.
      await claiming.catch(() => undefined);
      await session.close();
      throw err;
    } finally {
      linked.dispose();
    }
  }

  #onLost(session: Session, err: SessionExpiredError): void {
    if (session !== this.#session || this.#stop.signal.aborted || this.#displaced) return;
    this.#registered = false;
    this.#closeKeyWatch();
    this.#oldLeases.push(session.leaseId);
    if (this.#oldLeases.length > 4) this.#oldLeases.shift();
    log('%s: lease %s lost (%s); re-registering', this.key, session.leaseHex, err.message);
    emitSafely(this, 'lost', err);
    const { service, id, key } = this;
    publish('serviceLost', () => ({ service, id, key, leaseId: session.leaseId, error: err }));
    this.#reregistering ??= this.#reregister().finally(() => {
      this.#reregistering = undefined;
    });
  }

  /** Registers again with a new lease, retrying until it works or `deregister()`. */
  async #reregister(): Promise<void> {
    const stop = this.#stop.signal;
    let reportedTaken = false;
    try {
      await retrying(() => this.#registerOnce(stop), {
        signals: [stop],
        maxElapsedMs: Infinity,
        retryIf: (err) => !isClientClosed(err),
        onRetry: (err) => {
          if (err instanceof ServiceIdTakenError) {
            if (!reportedTaken) emitSafely(this, 'error', err);
            reportedTaken = true;
          } else if (!isTransient(err) && !isRecipeError(err, 'SESSION_EXPIRED'))
            emitSafely(this, 'error', err as Error);
          log('%s: re-registration failed (%s); retrying', this.key, (err as Error).message);
        },
      });
    } catch (err) {
      if (stop.aborted) return;
      // The application closed the client without deregistering: nothing more we can do.
      log('%s: client closed; giving up re-registering', this.key);
      emitSafely(this, 'error', err as Error);
      return;
    }
    if (stop.aborted) return; // deregister() closes the new session
    const session = this.#session!;
    log('%s re-registered (lease %s, revision %s)', this.key, session.leaseHex, this.#revision);
    emitSafely(this, 're-registered', { leaseId: session.leaseId, revision: this.#revision });
    publish('serviceReregistered', () => ({
      service: this.service,
      id: this.id,
      key: this.key,
      leaseId: session.leaseId,
      revision: this.#revision,
    }));
  }

  #closeKeyWatch(): void {
    this.#keyWatch?.close();
    this.#keyWatch = undefined;
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
    emitSafely(this, 'displaced', info);
  }
}
