import type { Namespace } from 'etcd3';
import { showKey } from './keys.js';
import { range, type KeyValue } from './kv.js';
import { logger } from './log.js';
import type { Session } from './session.js';
import { openWatch, WatchCompactedError, type WatchHandle } from './watch-hub.js';

const log = logger('own-key');

/**
 * Watches a key we hold and calls `onGone` once it is deleted or no longer
 * `ours`: our lease was revoked, an operator ran `etcdctl del`, etcd's own
 * bug #15247 revoked a live lease, or someone re-created (or, for a key
 * told apart by its lease, took over) the key. The watch starts just after
 * revision `since` (the key's creation, or our last write of it), so a
 * change that happened before we started watching is replayed, not missed;
 * if that history is compacted, one read decides. Returns the stop function.
 */
export function watchOwnKey(
  client: Namespace,
  key: Buffer,
  since: bigint,
  ours: (kv: KeyValue) => boolean,
  onGone: (err: Error) => void,
): () => void {
  let stopped = false;
  let handle: WatchHandle | undefined;
  const gone = (err: Error) => {
    if (stopped) return;
    stopped = true;
    handle?.close();
    onGone(err);
  };
  const listener = {
    onEvents: (events: { type: 'put' | 'delete'; kv: KeyValue }[]) => {
      for (const ev of events) {
        if (ev.type === 'delete' || !ours(ev.kv)) {
          gone(new Error(`${ev.type === 'delete' ? 'deleted' : 'overwritten'} at revision ${ev.kv.modRevision}`));
          return;
        }
      }
    },
    onEnd: (err: Error) => {
      if (err instanceof WatchCompactedError) void watchFromNow();
      else if (err.name === 'ClosedError') gone(err);
      else void watchFromNow();
    },
  };
  const watchFromNow = async () => {
    if (stopped) return;
    try {
      const h = await openWatch(client, { key }, listener);
      if (stopped) return h.close();
      handle = h;
      const now = await range(client, key);
      const kv = now.kvs[0];
      if (!kv || !ours(kv)) gone(new Error('deleted (found gone after a compaction)'));
    } catch (err) {
      // The client closed, or etcd is unreachable: the session's own deadline covers the lease.
      log('own-key watch on %s could not resume: %s', key.toString(), (err as Error).message);
      if ((err as Error).name === 'ClosedError') gone(err as Error);
    }
  };
  openWatch(client, { key, startRevision: since + 1n }, listener).then(
    (h) => {
      if (stopped) h.close();
      else handle = h;
    },
    (err: unknown) => listener.onEnd(err as Error),
  );
  return () => {
    stopped = true;
    handle?.close();
  };
}

/**
 * {@link watchOwnKey} for a key held on `session`'s lease: `lose` is called
 * with an `error` (LockNotHeldError, or NotLeaderError for an election term)
 * when someone else deleted the key, or with the
 * ClosedError when the client closed. A key that went with the lease itself
 * (revoked, expired) is the session's loss: the session says so (and so the
 * signals linked to it), as SESSION_EXPIRED, and `lose` is not called.
 */
export function watchHeldKey(
  session: Session,
  key: Buffer,
  createRevision: bigint,
  what: string,
  error: new (message: string, options?: ErrorOptions) => Error,
  lose: (reason: Error) => void,
): () => void {
  const ours = (kv: KeyValue) => kv.createRevision === createRevision;
  return watchOwnKey(session.client, key, createRevision, ours, (err) => {
    if (err.name === 'ClosedError') return lose(err);
    void session.verifyLease().then((alive) => {
      if (alive) lose(new error(`${what} lost: its key ${showKey(key)} was ${err.message}`, { cause: err }));
    });
  });
}
