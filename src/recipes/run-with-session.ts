import type { Namespace } from 'etcd3';
import { linkSignals } from '../core/abort.js';
import { isRecipeError } from '../core/errors.js';
import { inFreshSessions } from '../core/fresh-sessions.js';
import { logger } from '../core/log.js';
import type { Session } from '../core/session.js';
import { checkClient, checkFunction, checkInteger, checkWaitOptions } from '../core/validate.js';

const log = logger('run-with-session');

/** Options of {@link runWithSession}. */
export interface RunWithSessionOptions {
  /** TTL in seconds of each session (default 60, as Go). Work held by a dead process comes back after this long. */
  ttl?: number;
  /**
   * Stops everything: `fn`'s signal aborts, and once `fn` has settled the
   * session is closed and `runWithSession` rejects with the signal's reason.
   */
  signal?: AbortSignal;
  /**
   * Called after each lost session, once `fn` has settled and before the
   * next session is created, with the loss (a `SessionExpiredError`).
   */
  onLost?: (reason: unknown) => void;
}

/**
 * Runs `fn(session, signal)` on a fresh {@link Session}, and again on a new
 * one each time the session is lost: the worker loop every consumer of
 * leases needs.
 *
 * 1. creates a session (retrying while etcd is unreachable);
 * 2. runs `fn(session, signal)`; `signal` aborts when the session is lost
 *    (its lease expired, was revoked, or may have expired) or the caller's
 *    signal aborts;
 * 3. after a loss, it waits for `fn` to settle (so two runs of `fn` never
 *    overlap), closes that session, calls `onLost`, waits a jittered
 *    backoff and starts again at 1.
 *
 * Build everything that holds keys (WorkQueue, Semaphore, Mutex...) inside
 * `fn` from its session: they belong to that session and are useless after
 * it is lost. When `fn` returns (or throws) while its session is alive,
 * `runWithSession` closes the session and resolves with that value (or
 * rejects with that error); a `SESSION_EXPIRED` error is a loss, not an
 * outcome, and so is anything `fn` returns or throws after its signal
 * aborted for a loss.
 *
 * `fn` must honour its signal: the next session starts only after `fn`
 * settled. A process paused past its TTL wakes with a session that is
 * already gone on the server: fence side effects (`job.ifOwner()`).
 *
 * @returns what `fn` returned
 * @throws the caller's signal's reason when it aborts; `fn`'s error
 */
export function runWithSession<T>(
  client: Namespace,
  fn: (session: Session, signal: AbortSignal) => Promise<T> | T,
  options: RunWithSessionOptions = {},
): Promise<T> {
  checkClient(client);
  checkFunction(fn, 'fn');
  checkWaitOptions(options);
  const { ttl = 60, signal: outer, onLost } = options;
  checkInteger(ttl, 'options.ttl', 1, 9_000_000_000);
  if (onLost !== undefined) checkFunction(onLost, 'options.onLost');
  outer?.throwIfAborted();

  return inFreshSessions(client, { ttl, signal: outer, what: 'runWithSession', log }, async (session) => {
    let lostReason: unknown;
    session.once('lost', (err) => {
      lostReason = err;
    });
    const linked = linkSignals(session.signal, outer);
    // The caller's stop wins over a loss; a loss wins over what fn made of it. A SESSION_EXPIRED
    // from fn is a loss too: etcd can notice the lease gone before our keepalive does.
    try {
      const value = await fn(session, linked.signal);
      if (outer?.aborted || lostReason === undefined) return { lost: false, value };
    } catch (error) {
      if (lostReason === undefined && isRecipeError(error, 'SESSION_EXPIRED')) lostReason = error;
      if (outer?.aborted || lostReason === undefined) throw error;
    } finally {
      linked.dispose();
    }
    log('session %s lost: %s', session.leaseHex, (lostReason as Error)?.message);
    try {
      onLost?.(lostReason);
    } catch (err) {
      log('onLost threw (ignored): %s', (err as Error)?.message);
    }
    return { lost: true, reason: lostReason };
  });
}
