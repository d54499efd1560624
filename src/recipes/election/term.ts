import { linkSignals, type LinkedSignal } from '../../core/abort.js';
import { NotLeaderError, withoutStack } from '../../core/errors.js';
import { deleteOwnKey } from '../../core/holding.js';
import { showKey } from '../../core/keys.js';
import type { LocalRelease } from '../../core/local-lock.js';
import { logger } from '../../core/log.js';
import { watchOwnKey } from '../../core/own-key.js';
import type { Session } from '../../core/session.js';

const log = logger('election');

/**
 * One term of leadership: our key and its create revision, a signal that
 * aborts when the term may be over (session lost, key deleted, resign), and
 * the local turn that keeps other Election objects of this session and name
 * in this process waiting. Unlike a lock's `Holding`, a term lost without a
 * resign lets the next local candidate go at once, and says NOT_LEADER.
 */
export class Term {
  readonly revision: bigint;
  value: Buffer;
  readonly #session: Session;
  readonly #key: Buffer;
  readonly #linked: LinkedSignal;
  readonly #releaseLocal: LocalRelease;
  readonly #what: string;
  #stopWatch: (() => void) | undefined;
  #resigning: Promise<void> | undefined;
  #resignStarted = false;

  constructor(
    session: Session,
    key: Buffer,
    revision: bigint,
    value: Buffer,
    releaseLocal: LocalRelease,
    what: string,
    onLost: (reason: unknown) => void,
  ) {
    this.#session = session;
    this.#key = key;
    this.revision = revision;
    this.value = value;
    this.#releaseLocal = releaseLocal;
    this.#what = what;
    this.#linked = linkSignals(session.signal);
    const ended = () => {
      this.#stopWatch?.();
      if (this.#resignStarted) return;
      // Lost, not resigned: let the next local caller go (its calls will see why).
      releaseLocal();
      onLost(this.#linked.signal.reason);
    };
    if (this.#linked.signal.aborted) queueMicrotask(ended);
    else this.#linked.signal.addEventListener('abort', ended, { once: true });
  }

  get signal(): AbortSignal {
    return this.#linked.signal;
  }

  /** Ends the term as lost (no-op once ended). */
  lose(reason: unknown): void {
    this.#linked.abort(reason);
  }

  /**
   * Starts watching our key (once per term) and returns the term's signal.
   * From then on a deletion (expiry, revoke, someone else's delete) ends the
   * term at once, without waiting for the session to notice. The watch
   * starts after our key's creation, so an earlier deletion is not missed.
   */
  watch(): AbortSignal {
    if (!this.#stopWatch && !this.signal.aborted) {
      this.#stopWatch = watchOwnKey(this.#session.client, this.#key, this.revision, (err) => {
        const deleted = `${this.#what}: our key ${showKey(this.#key)} was ${err.message}`;
        this.lose(err.name === 'ClosedError' ? err : new NotLeaderError(deleted, { cause: err }));
      });
    }
    return this.signal;
  }

  /** Ends the term and deletes our key (guarded by its create revision). Idempotent. */
  resign(): Promise<void> {
    this.#resigning ??= (async () => {
      const lost = this.#linked.signal.aborted;
      // Mark before aborting: the next local caller must wait until our key is gone.
      this.#resignStarted = true;
      this.#linked.abort(withoutStack(() => new NotLeaderError(`${this.#what}: resigned`)));
      try {
        if (!lost || !this.#session.expired) await deleteOwnKey(this.#session, this.#key, this.revision, log);
        log('%s: %s resigned (revision %s)', this.#what, showKey(this.#key), this.revision);
      } finally {
        this.#releaseLocal();
      }
    })();
    return this.#resigning;
  }
}
