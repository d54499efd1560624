import { deleteOwnKey } from './holding.js';
import { showKey } from './keys.js';
import { takeLocalTurn } from './local-lock.js';
import type { PendingKey } from './line.js';
import type { Logger } from './log.js';
import { LATE_COPY_MS } from './receipts.js';
import type { Session } from './session.js';
import { openWatch, type WatchHandle } from './watch-hub.js';

/*
 * A create whose reply never came (the call gave up while a frozen peer held
 * it) may still land after our cleanup's delete: etcd serves the streams of
 * one connection in no fixed order. A unique line key that lands then stays
 * on our live lease for good, a phantom in the line that blocks everyone
 * behind it (docs/internals.md, "Outcome unknown means prove it").
 */

/**
 * Deletes the key a join may have created (`pending`). When the create's
 * reply never came, a watch stands by for LATE_COPY_MS (or until the
 * session ends) and deletes a copy that lands late. Waiting for the create
 * instead is no option: nothing voids a create-if-absent. A name unique to
 * the call (createUniqueKey) is ours to delete at any time; a session's own
 * name (`localTurn`: Mutex, Election) is deleted only in its local turn, once
 * no later call of ours holds it, and only if the copy is still there.
 */
export async function deletePendingKey(
  session: Session,
  pending: PendingKey,
  log?: Logger,
  localTurn?: Buffer,
): Promise<void> {
  const { key, rev, group, unique } = pending;
  if (!key) return;
  const stopStandingBy =
    rev === undefined && (unique || localTurn) ? await standBy(session, key, group, localTurn, log) : undefined;
  try {
    await deleteOwnKey(session, key, rev, log, group);
  } catch (err) {
    stopStandingBy?.();
    throw err;
  }
}

/** Watches `key` (or its group) for a copy of our create that lands late, and deletes it. Returns its stop. */
async function standBy(
  session: Session,
  key: Buffer,
  group: Buffer | undefined,
  localTurn: Buffer | undefined,
  log: Logger | undefined,
): Promise<(() => void) | undefined> {
  let handle: WatchHandle | undefined;
  let timer: NodeJS.Timeout | undefined;
  /** Create revisions of copies being deleted: one delete each. */
  const deleting = new Set<bigint>();
  const stop = () => {
    clearTimeout(timer);
    session.signal.removeEventListener('abort', stop);
    handle?.close();
  };
  try {
    handle = await openWatch(
      session.client,
      { key: group ?? key, prefix: !!group },
      {
        onEvents: (events) => {
          // A copy creates the key: version 1 (a later put of ours on it, e.g. Election's proclaim, is not one).
          const copy = events.find(
            (e) => e.type === 'put' && e.kv.version === 1n && e.kv.key.equals(key) && e.kv.lease === session.leaseId,
          );
          if (!copy || deleting.has(copy.kv.createRevision)) return;
          deleting.add(copy.kv.createRevision);
          // Watching on: a frozen peer may hold several copies (retries), each landing once the last is gone.
          log?.('a late copy of the create of %s landed; deleting it', showKey(key));
          deleteCopy(session, key, copy.kv.createRevision, group, localTurn, log).catch((err: unknown) =>
            log?.('delete of a late copy failed (the key expires with the lease): %s', (err as Error).message),
          );
        },
        onEnd: stop,
      },
      session.signal,
    );
  } catch (err) {
    log?.('no watch for a late copy of %s: %s', showKey(key), (err as Error).message);
    return undefined;
  }
  timer = setTimeout(stop, LATE_COPY_MS).unref();
  session.signal.addEventListener('abort', stop, { once: true });
  if (session.signal.aborted) stop(); // ended while the watch was being created
  return stop;
}

/** Deletes the copy created at `rev`, in our local turn for a session's own name (a later call may hold it). */
async function deleteCopy(
  session: Session,
  key: Buffer,
  rev: bigint,
  group: Buffer | undefined,
  localTurn: Buffer | undefined,
  log: Logger | undefined,
): Promise<void> {
  const release = localTurn ? await takeLocalTurn(session.leaseId, localTurn, session.signal) : undefined;
  try {
    // Guarded by the copy's create revision: a later call of ours that adopted the copy held the turn
    // until it deleted it.
    await deleteOwnKey(session, key, rev, log, group);
  } finally {
    release?.();
  }
}
