import { Mutex as LocalMutex } from 'async-mutex';
import { raceAbort } from './abort.js';

/*
 * Go's layout gives a session exactly one key per lock name, so two holders
 * in one process on the same session and name would share one etcd key and
 * both believe they hold the lock (and either one's unlock would free both).
 * Every recipe that writes a per-session key queues its local callers here
 * first, keyed by (lease, key): local callers take turns, and only the one at
 * the head of the local queue touches etcd.
 */

interface Entry { mutex: LocalMutex; users: number }
const registry = new Map<string, Entry>();

/** Releases a local turn; idempotent. */
export type LocalRelease = () => void;

/**
 * Takes the local turn for (lease, key), waiting behind other local callers.
 * Rejects with the signal's reason if it aborts first (the turn, when it
 * comes, is passed on at once).
 */
export async function takeLocalTurn(leaseId: string, key: Buffer, signal?: AbortSignal): Promise<LocalRelease> {
  const id = `${leaseId}\u0000${key.toString('hex')}`;
  let entry = registry.get(id);
  if (!entry) {
    entry = { mutex: new LocalMutex(), users: 0 };
    registry.set(id, entry);
  }
  entry.users++;
  const e = entry;
  let released = false;
  const done = () => {
    if (--e.users === 0 && registry.get(id) === e) registry.delete(id);
  };
  const acquiring = e.mutex.acquire();
  try {
    const release = await raceAbort(acquiring, signal);
    return () => {
      if (released) return;
      released = true;
      release();
      done();
    };
  } catch (err) {
    // Keep FIFO order intact: take the turn when it comes and hand it on at once.
    void acquiring.then((release) => { release(); done(); }, done);
    throw err;
  }
}
