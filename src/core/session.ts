import { EventEmitter, setMaxListeners } from 'node:events';
import type { Namespace } from 'etcd3';
import { raceAbort } from './abort.js';
import { clientScope } from './client.js';
import { noteCluster } from './cluster-id.js';
import { KeepAlive } from './keepalive.js';
import { publish, sessionFields } from './diagnostics.js';
import { type ClosedError, InvalidArgumentError, isRecipeError, SessionExpiredError } from './errors.js';
import { isLeaseNotFound } from './etcd-errors.js';
import { leaseHex } from './keys.js';
import { logger } from './log.js';
import { retrying } from './retry.js';
import { checkClient, checkInteger, checkNumber, checkOptions, checkSignal } from './validate.js';

const log = logger('session');

/** Options of {@link Session.create}. */
export interface SessionOptions {
  /** Lease time-to-live in whole seconds (default 60, as in Go). etcd may grant more. */
  ttl?: number;
  /**
   * Adopt an existing lease instead of granting one (Go's `WithLease`), e.g.
   * to resume a lock or leadership after a restart. The session keeps it
   * alive and revokes it on `close()`.
   */
  leaseId?: string;
  /**
   * How long before the computed lease expiry the session gives up and
   * aborts its signal, in ms. Default: 10 % of the TTL, clamped to
   * [100, 2000]. This covers timer lateness and the time a holder needs to
   * react to the abort.
   */
  expiryMarginMs?: number;
  /** Aborts the grant. */
  signal?: AbortSignal;
}

/** Events of a {@link Session}. */
export interface SessionEvents {
  /** The lease was lost (expired, revoked from outside, or not kept alive in time). Not emitted by `close()`. */
  lost: [err: SessionExpiredError];
  /** `close()` finished. */
  closed: [];
}

/**
 * A lease that is kept alive for as long as the session lives, and the
 * ownership scope of every key a recipe writes on its behalf: when the
 * process dies, the lease expires and etcd deletes those keys.
 *
 * `signal` aborts (with a {@link SessionExpiredError}) at the latest when the
 * lease may have expired on the server: at the send time of the last
 * acknowledged keepalive plus the TTL, minus a safety margin, on the
 * monotonic clock. It does not wait for the server or for etcd3's own
 * lease-loss event, which can come up to 2×TTL late. It also aborts when the
 * server reports the lease gone, and on `close()`.
 *
 * A session's liveness is never proof of ownership: a process paused longer
 * than the TTL wakes up believing nothing happened until its timers run.
 * Guard writes with fencing tokens (see Mutex.ifOwner).
 */
export class Session extends EventEmitter<SessionEvents> implements AsyncDisposable {
  /** The etcd3 client (or namespace) this session uses. */
  readonly client: Namespace;
  /** The lease ID, as the decimal string etcd3 uses. */
  readonly leaseId: string;
  /** The lease ID in lowercase hex, as Go prints it into keys. */
  readonly leaseHex: string;
  /** The TTL etcd granted, in seconds. */
  readonly ttl: number;

  readonly #controller = new AbortController();
  readonly #marginMs: number;
  #deadline: number;
  #lastAckedSendAt: number;
  readonly #keepAlive: KeepAlive;
  #deadlineTimer: NodeJS.Timeout | undefined;
  #closing: Promise<void> | undefined;

  private constructor(client: Namespace, leaseId: string, ttl: number, sentAt: number, marginMs: number) {
    super();
    // Every hold, waiter and job on this session listens to its signal: hundreds are normal, not a leak.
    setMaxListeners(0, this.#controller.signal);
    this.client = client;
    this.leaseId = leaseId;
    this.leaseHex = leaseHex(leaseId);
    this.ttl = ttl;
    this.#marginMs = marginMs;
    this.#lastAckedSendAt = sentAt;
    this.#deadline = sentAt + ttl * 1000 - marginMs;
    this.#keepAlive = new KeepAlive(client, this, this.#controller.signal, {
      ack: (ttlLeft, ackSentAt, resumed) => this.#onKeepAlive(ttlLeft, ackSentAt, resumed),
    });
  }

  /**
   * Grants a lease (or adopts `options.leaseId`) and starts keeping it alive.
   * @param client - an etcd3 client or namespace
   * @param options - TTL in seconds (default 60) and other options
   * @throws InvalidArgumentError on bad input, before anything is granted
   */
  static async create(client: Namespace, options: SessionOptions = {}): Promise<Session> {
    checkClient(client);
    checkOptions(options);
    const { ttl = 60, leaseId, expiryMarginMs, signal } = options;
    checkInteger(ttl, 'options.ttl', 1, 9_000_000_000);
    checkSignal(signal);
    if (leaseId !== undefined && (typeof leaseId !== 'string' || !/^[1-9][0-9]{0,18}$/.test(leaseId))) {
      throw new InvalidArgumentError(
        'options.leaseId',
        `must be a lease ID as a positive decimal string, got ${
          typeof leaseId === 'string' ? JSON.stringify(leaseId) : typeof leaseId
        }`,
      );
    }
    if (expiryMarginMs !== undefined) checkNumber(expiryMarginMs, 'options.expiryMarginMs', 0, (ttl * 1000) / 2);
    signal?.throwIfAborted();

    clientScope(client).signal.throwIfAborted();
    let id: string;
    let granted: number;
    let sentAt = performance.now();
    if (leaseId === undefined) {
      const res = await retrying(
        async () => {
          // The lease runs from the attempt that landed: a slow first attempt must not age the session.
          sentAt = performance.now();
          const granting = client.leaseClient.leaseGrant({ TTL: ttl });
          try {
            return await raceAbort(granting, signal);
          } catch (err) {
            // Given up (aborted) while the grant was in flight: revoke it if it lands.
            granting
              .then(
                (r) => client.leaseClient.leaseRevoke({ ID: r.ID }),
                () => undefined,
              )
              .catch(() => undefined);
            throw err;
          }
        },
        { signals: [signal], maxElapsedMs: 10_000 },
      );
      id = res.ID;
      granted = Number(res.TTL);
      noteCluster(client, res); // lets the session's first join find this process's line feeds
    } else {
      id = leaseId;
      const res = await raceAbort(client.leaseClient.leaseTimeToLive({ ID: id }), signal);
      if (Number(res.TTL) <= 0) throw new SessionExpiredError(`lease ${id} does not exist or has expired`);
      granted = Number(res.grantedTTL);
      // The remaining TTL bounds the first deadline until our first keepalive is acknowledged.
      sentAt -= (granted - Number(res.TTL)) * 1000;
    }
    const session = new Session(client, id, granted, sentAt, expiryMarginMs ?? defaultMargin(granted));
    session.#start();
    if (leaseId !== undefined) return session;
    log('granted lease %s (%s) ttl=%ds', id, session.leaseHex, granted);
    if (owned.has(options)) session.#ownedBy(client);
    return session;
  }

  /** Closing the client revokes this session; the session forgets the client when it ends first. */
  #ownedBy(client: Namespace): void {
    const disown = clientScope(client).own(this);
    this.#controller.signal.addEventListener('abort', disown, { once: true });
  }

  /**
   * Aborted, with a {@link SessionExpiredError}, once the lease is lost, may have expired, or the session is closed.
   */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** True once the session is no longer usable (lost or closed). */
  get expired(): boolean {
    return this.#controller.signal.aborted;
  }

  /**
   * Milliseconds until the session gives up on its lease (0 once expired),
   * computed from the last acknowledged keepalive.
   */
  get remainingMs(): number {
    return this.expired ? 0 : Math.max(0, this.#deadline - performance.now());
  }

  /**
   * True while the lease is certainly alive now: not lost or closed, and its
   * own deadline (last acknowledged keepalive + TTL − margin) not yet passed,
   * on the clock, even if no timer has fired yet. A process woken from a long
   * pause sees false at once, before its timers run.
   */
  get live(): boolean {
    return !this.expired && performance.now() < this.#deadline;
  }

  /**
   * `performance.now()` time at which the last acknowledged keepalive (or the
   * grant) was sent: the server's lease runs at least TTL seconds from there.
   */
  get lastKeepAliveSentAt(): number {
    return this.#lastAckedSendAt;
  }

  /** Throws the session's {@link SessionExpiredError} if it is no longer usable. */
  throwIfExpired(): void {
    this.#controller.signal.throwIfAborted();
  }

  /**
   * Stops keeping the lease alive and revokes it, deleting every key attached
   * to it. Idempotent. A failed revoke (etcd unreachable) is logged, not
   * thrown: the lease then expires after its TTL.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const wasLive = !this.expired || isRecipeError(this.signal.reason, 'CLOSED');
      this.#stop(new SessionExpiredError(`session ${this.leaseHex} closed`));
      if (wasLive) await this.#revoke();
      this.emit('closed');
      publish('sessionClosed', () => sessionFields(this));
    })();
    return this.#closing;
  }

  /**
   * Stops keeping the lease alive without revoking it (Go's `Orphan`): keys
   * stay until the TTL runs out. Useful when handing the lease to another
   * process, which can adopt it with `Session.create(client, { leaseId })`.
   */
  orphan(): void {
    this.#stop(new SessionExpiredError(`session ${this.leaseHex} orphaned`));
  }

  /**
   * @internal For recipes: if `err` is etcd's "requested lease not found" (a
   * write attached to our lease after etcd dropped it, before our keepalive
   * noticed), the session is lost: mark it so, and return the
   * SessionExpiredError to throw instead. Any other error is returned as is.
   */
  leaseError(err: unknown, what: string): unknown {
    if (!isLeaseNotFound(err)) return err;
    this.#lose(new SessionExpiredError(`${what}: etcd no longer has lease ${this.leaseHex}`, { cause: err }));
    return this.signal.reason;
  }

  /**
   * @internal Asks etcd whether the lease still exists; if it does not, the
   * session is lost (as if its keepalive had said so). Resolves false then,
   * true when the lease is alive or etcd could not tell.
   */
  async verifyLease(): Promise<boolean> {
    if (this.expired) return false;
    try {
      const res = await this.client.leaseClient.leaseTimeToLive({ ID: this.leaseId });
      if (Number(res.TTL) > 0) return true;
    } catch (err) {
      if (!isLeaseNotFound(err)) return !this.expired;
    }
    this.#lose(
      new SessionExpiredError(`session ${this.leaseHex} expired: etcd reports the lease gone (expired or revoked)`),
    );
    return false;
  }

  /** `await using session = await Session.create(...)` closes it at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // -------------------------------------------------------------------------

  #start(): void {
    const closed = clientScope(this.client).signal;
    if (closed.aborted) {
      this.#stop(closed.reason as ClosedError);
      return;
    }
    // A closed client can keep no lease alive: stop (the owner of an owned session revokes it first).
    const onClientClosed = () => this.#stop(closed.reason as ClosedError);
    closed.addEventListener('abort', onClientClosed, { once: true });
    this.#controller.signal.addEventListener('abort', () => closed.removeEventListener('abort', onClientClosed), {
      once: true,
    });
    this.#armDeadline();
    void this.#keepAlive.connect();
    publish('sessionCreated', () => sessionFields(this));
  }

  #stop(reason: SessionExpiredError | ClosedError): boolean {
    if (this.#controller.signal.aborted) return false;
    this.#controller.abort(reason);
    clearTimeout(this.#deadlineTimer);
    this.#keepAlive.stop();
    return true;
  }

  #lose(reason: SessionExpiredError): void {
    // Published before the signal aborts: subscribers hear of the cause before its effects (locks lost, leaders
    // deposed).
    if (!this.expired) publish('sessionLost', () => ({ ...sessionFields(this), error: reason }));
    if (!this.#stop(reason)) return;
    log('lease %s lost: %s', this.leaseHex, reason.message);
    this.emit('lost', reason);
    // The lease may still exist (etcd unreachable, or slow): revoke it in the
    // background so that waiters behind our keys move on as soon as possible.
    void this.#revoke();
  }

  async #revoke(): Promise<void> {
    const timeout = Math.min(this.ttl * 1000, 5000);
    try {
      await this.client.leaseClient.leaseRevoke({ ID: this.leaseId }, { deadline: Date.now() + timeout });
      log('revoked lease %s', this.leaseHex);
    } catch (err) {
      log('revoke of lease %s failed (it will expire by itself): %s', this.leaseHex, (err as Error).message);
    }
  }

  #armDeadline(): void {
    clearTimeout(this.#deadlineTimer);
    const wait = this.#deadline - performance.now();
    if (wait <= 0) {
      const since = Math.round(performance.now() - this.#lastAckedSendAt);
      this.#lose(
        new SessionExpiredError(
          `session ${this.leaseHex} expired: no keepalive acknowledged for ${since} ms (ttl ${this.ttl} s)`,
        ),
      );
      return;
    }
    // Timers can fire early by a millisecond: re-check on wake instead of trusting them.
    this.#deadlineTimer = setTimeout(() => this.#armDeadline(), Math.ceil(wait)).unref();
  }
  /** A keepalive ack (see {@link KeepAlive}): the deadline moves to its send time + TTL − margin. */
  #onKeepAlive(ttl: number, sentAt: number | undefined, resumed: boolean): void {
    if (!(ttl > 0)) {
      const gone = `session ${this.leaseHex} expired: etcd reports the lease gone (expired or revoked)`;
      this.#lose(new SessionExpiredError(gone));
      return;
    }
    if (sentAt === undefined) return;
    const left = this.#lastAckedSendAt + this.ttl * 1000 - performance.now();
    if (resumed || left < this.ttl * 500)
      publish('sessionRenewedLate', () => ({
        ...sessionFields(this),
        reason: resumed ? 'reconnect' : 'late',
        remainingMs: left,
      }));
    this.#lastAckedSendAt = sentAt;
    this.#deadline = Math.max(this.#deadline, sentAt + ttl * 1000 - this.#marginMs);
    this.#armDeadline();
  }
}

function defaultMargin(ttlSeconds: number): number {
  return Math.min(2000, Math.max(100, ttlSeconds * 100));
}

const owned = new WeakSet<object>();

/**
 * @internal A session the library creates for itself (withLock,
 * runAsLeader, registrations, queue consumers): revoked when its client
 * closes, like everything else the library keeps on that client.
 */
export function createOwnedSession(client: Namespace, options: SessionOptions): Promise<Session> {
  const own = { ...options };
  owned.add(own);
  return Session.create(client, own);
}

/** Throws an InvalidArgumentError unless `value` is a live-or-dead {@link Session}. */
export function checkSession(value: unknown, argument = 'session'): asserts value is Session {
  if (value instanceof Session) return;
  const s = value as Partial<Session> | null;
  // Accept a Session from the other (ESM/CJS) copy of this package.
  if (
    typeof s === 'object' &&
    s !== null &&
    typeof s.leaseId === 'string' &&
    typeof s.leaseHex === 'string' &&
    s.signal instanceof AbortSignal &&
    typeof s.client === 'object'
  )
    return;
  throw new InvalidArgumentError(
    argument,
    `must be a Session (from Session.create), got ${value === null ? 'null' : typeof value}`,
  );
}
