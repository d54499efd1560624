import type { Namespace } from 'etcd3';
import { LockNotHeldError } from '../core/errors.js';
import { range } from '../core/kv.js';
import { retrying } from '../core/retry.js';
import { ChangeWatch } from '../core/wait.js';

/** A signal that aborts when a held key is deleted (or re-created) by anyone; stop it with `dispose()`. */
export interface OwnKeyWatch {
  readonly signal: AbortSignal;
  dispose(): void;
}

/**
 * Watches the key we hold (created at `createRevision`) for its deletion.
 * A Mutex or Semaphore handle only notices the loss of its session; a key
 * deleted from outside (`etcdctl del`, an admin's Unlock) must stop the
 * child too. The watch starts right after the key's creation, so a delete
 * that happened before the watch exists is replayed, not missed; a watch
 * that ends (compaction) is re-checked with a read and re-opened.
 */
export function watchOwnKey(client: Namespace, key: string, createRevision: bigint): OwnKeyWatch {
  const lost = new AbortController();
  const stop = new AbortController();
  const keyBytes = Buffer.from(key);
  const target = { kind: 'key' as const, key: keyBytes, createRevision };
  const retry = { signals: [stop.signal], maxElapsedMs: Infinity };
  void (async () => {
    let from = createRevision + 1n;
    for (;;) {
      const watch = await retrying(() => ChangeWatch.open(client, target, stop.signal, from), retry);
      try {
        await watch.untilChanged(stop.signal);
      } finally {
        watch.close();
      }
      const r = await retrying(() => range(client, keyBytes), retry);
      const kv = r.kvs[0];
      if (!kv || kv.createRevision !== createRevision) {
        lost.abort(new LockNotHeldError(`key ${key} was deleted`));
        return;
      }
      from = r.revision + 1n;
    }
  })().catch((err: unknown) => {
    // Stopped on purpose; or a failure that is not transient (closed client): we can no longer vouch for the key.
    if (!stop.signal.aborted) lost.abort(err);
  });
  return {
    signal: lost.signal,
    dispose: () => stop.abort(),
  };
}
