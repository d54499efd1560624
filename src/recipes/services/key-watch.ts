import type { Namespace } from 'etcd3';
import { SessionExpiredError } from '../../core/errors.js';
import { range } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { retrying } from '../../core/retry.js';
import type { Session } from '../../core/session.js';
import { watchOwnKey } from '../../core/own-key.js';
import type { DisplacedInfo } from './layout.js';

const log = logger('service-registry');

/** What a {@link KeyWatch} reports. */
export interface KeyWatchEvents {
  /** Our key went with our lease, which etcd no longer has: re-register. */
  lost(err: SessionExpiredError): void;
  /** Our key was deleted or taken over while our lease lives. */
  displaced(info: DisplacedInfo): void;
}

/**
 * Watches a registration's own key while its lease lives, to notice a
 * delete or a takeover: core's own-key watch, with the key told apart by
 * its lease (a put by another lease keeps the create revision). The
 * registry closes it whenever this registration stops being current.
 */
export class KeyWatch {
  readonly #client: Namespace;
  readonly #key: string;
  readonly #session: Session;
  readonly #stop: AbortSignal;
  readonly #on: KeyWatchEvents;
  #stopWatch: (() => void) | undefined;
  #verifying = false;
  #closed = false;

  constructor(client: Namespace, key: string, session: Session, stop: AbortSignal, on: KeyWatchEvents) {
    this.#client = client;
    this.#key = key;
    this.#session = session;
    this.#stop = stop;
    this.#on = on;
  }

  /** Watches from the revision after `revision` (our write's, or the read that found the key ours). */
  start(revision: bigint): void {
    this.#stopWatch?.();
    const { leaseId } = this.#session;
    this.#stopWatch = watchOwnKey(
      this.#client,
      Buffer.from(this.#key),
      revision,
      (kv) => kv.lease === leaseId,
      (err) => {
        log('%s: own key %s; checking', this.#key, err.message);
        void this.verify();
      },
    );
  }

  close(): void {
    this.#closed = true;
    this.#stopWatch?.();
  }

  /**
   * Something happened to our key: read it. Still ours → watch again. Taken
   * by another lease → displaced. Gone while our lease lives → displaced;
   * gone with our lease → lost (re-register).
   */
  async verify(): Promise<void> {
    if (this.#verifying || this.#closed) return;
    this.#verifying = true;
    const session = this.#session;
    const forever = { signals: [session.signal, this.#stop], maxElapsedMs: Infinity };
    try {
      const res = await retrying(() => range(this.#client, this.#key), forever);
      if (this.#closed) return;
      const kv = res.kvs[0];
      if (kv && kv.lease === session.leaseId) return this.start(res.revision);
      if (!kv) {
        const ttl = await retrying(() => this.#client.leaseClient.leaseTimeToLive({ ID: session.leaseId }), forever);
        if (this.#closed) return;
        if (!(Number(ttl.TTL) > 0)) {
          // Our lease is gone on the server although the session has not noticed yet: that is a loss.
          session.orphan();
          return this.#on.lost(
            new SessionExpiredError(`${this.#key}: lease ${session.leaseHex} expired on the server`),
          );
        }
      }
      this.#on.displaced({ reason: kv ? 'replaced' : 'deleted', leaseId: kv?.lease });
    } catch (err) {
      log('%s: checking own key failed: %s', this.#key, (err as Error).message);
    } finally {
      this.#verifying = false;
    }
  }
}
