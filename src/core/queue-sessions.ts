import type { Namespace } from 'etcd3';
import type { Logger } from './log.js';
import { raceAbort } from './abort.js';
import type { SessionSource } from './claim-source.js';
import { SessionExpiredError } from './errors.js';
import { retrying } from './retry.js';
import { createOwnedSession, type Session } from './session.js';

/**
 * The lease of a Queue or PriorityQueue, which take a client rather than a
 * session: created on the first dequeue, shared by every dequeue of the
 * object, replaced when lost, and revoked after `idleMs` without a dequeue
 * (or by `close()`). Its keys (waiters, receipts) vanish with it.
 */
export class OwnSession implements SessionSource {
  readonly replaceable = true;
  readonly #client: Namespace;
  readonly #ttl: number;
  readonly #idleMs: number;
  readonly #log: Logger;
  #session: Session | undefined;
  #creating: Promise<Session> | undefined;
  #users = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(client: Namespace, ttl: number, idleMs: number, log: Logger) {
    this.#client = client;
    this.#ttl = ttl;
    this.#idleMs = idleMs;
    this.#log = log;
  }

  /** The current session, if any (for tests and stats). */
  get current(): Session | undefined {
    return this.#session;
  }

  begin(): void {
    this.#users++;
    clearTimeout(this.#idleTimer);
  }

  end(): void {
    if (--this.#users > 0) return;
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      if (this.#users === 0) void this.#drop();
    }, this.#idleMs).unref();
  }

  async acquire(signal: AbortSignal | undefined): Promise<Session> {
    if (this.#closed) throw new SessionExpiredError('queue closed');
    const live = this.#session;
    if (live && !live.expired) return live;
    this.#creating ??= (async () => {
      try {
        const create = () =>
          retrying(() => createOwnedSession(this.#client, { ttl: this.#ttl }), { maxElapsedMs: Infinity });
        let s = await create();
        // A grant that took longer than its TTL (a long outage) hands back a session already given up.
        for (let i = 0; s.expired && i < 100; i++) s = await create();
        this.#log('own lease %s granted', s.leaseHex);
        if (this.#closed) {
          await s.close();
          throw new SessionExpiredError('queue closed');
        }
        this.#session = s;
        return s;
      } finally {
        this.#creating = undefined;
      }
    })();
    return raceAbort(this.#creating, signal);
  }

  async #drop(): Promise<void> {
    const s = this.#session;
    this.#session = undefined;
    if (s) {
      this.#log('own lease %s idle: revoking', s.leaseHex);
      await s.close();
    }
  }

  /** Revokes the lease (deleting its keys); later takes fail. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    await this.#creating?.catch(() => undefined);
    await this.#drop();
  }
}

/** A caller's Session (WorkQueue): never replaced; its loss ends the take. */
export class GivenSession implements SessionSource {
  readonly replaceable = false;
  readonly #session: Session;

  constructor(session: Session) {
    this.#session = session;
  }

  acquire(): Promise<Session> {
    this.#session.throwIfExpired();
    return Promise.resolve(this.#session);
  }

  begin(): void {}
  end(): void {}
}
