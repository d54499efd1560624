import type { Namespace } from 'etcd3';
import type { Logger } from './log.js';
import { abortReason } from './abort.js';
import { retrying } from './retry.js';
import { isTransient } from './etcd-errors.js';
import { createOwnedSession, type Session } from './session.js';

/*
 * The recovery loop shared by runAsLeader and runWithSession: each round
 * runs on a fresh session (closed when the round ends); a round that ends
 * because its session was lost, or that could not start because etcd was
 * unreachable, is followed by another one after a jittered backoff (the
 * retry policy of core/retry.ts), until the caller's signal aborts.
 */

/** How a round ended: with the caller's result, or lost (start another round on a fresh session). */
export type RoundOutcome<T> = { lost: false; value: T } | { lost: true; reason: unknown };

/** Options of {@link inFreshSessions}. */
export interface FreshSessionsOptions {
  /** TTL of each round's session, in seconds. */
  ttl: number;
  /** Ends the loop: rejects with its reason (after the running round settled). */
  signal?: AbortSignal;
  /** Names the caller in logs. */
  what: string;
  log: Logger;
}

/** Thrown inside the retry loop to ask for another round; never escapes it. */
class RoundLost extends Error {
  override name = 'RoundLost';
  constructor(readonly reason: unknown) {
    super(`session lost: ${(reason as Error)?.message ?? String(reason)}`);
  }
}

/**
 * Runs `round` on a fresh session until a round ends with a result (which
 * is returned) or throws (which is rethrown as is). A round that reports
 * itself lost, and a failure to create the session that may go away by
 * itself (etcd unreachable), start another round after a jittered backoff.
 * The caller's signal ends the loop with its reason (whatever the round
 * made of it). Every session is
 * closed before the next one is created.
 */
export async function inFreshSessions<T>(
  client: Namespace,
  options: FreshSessionsOptions,
  round: (session: Session) => Promise<RoundOutcome<T>>,
): Promise<T> {
  const { ttl, signal: outer, what, log } = options;
  // A round's own error ends the loop as it is: never retried, even if it looks transient.
  let roundFailed = false;
  try {
    return await retrying(
      async () => {
        outer?.throwIfAborted();
        const session = await createOwnedSession(client, { ttl, signal: outer });
        let outcome: RoundOutcome<T>;
        try {
          outcome = await round(session);
        } catch (err) {
          roundFailed = true;
          throw err;
        } finally {
          await session.close();
        }
        if (outer?.aborted) throw abortReason(outer);
        if (outcome.lost) throw new RoundLost(outcome.reason);
        return outcome.value;
      },
      {
        signals: [outer],
        maxElapsedMs: Infinity,
        retryIf: (err) => !roundFailed && (err instanceof RoundLost || isTransient(err)),
        onRetry: (err, attempt) =>
          log('%s: round %d ended (%s); starting again on a fresh session', what, attempt, (err as Error)?.message),
      },
    );
  } catch (err) {
    if (outer?.aborted) throw abortReason(outer);
    throw err;
  }
}
