import { raceAbort } from './abort.js';
import { processWide } from './shared.js';

/*
 * Go's layout gives a session exactly one key per lock name, so two holders
 * in one process on the same session and name would share one etcd key and
 * both believe they hold the lock (and either one's unlock would free both).
 * Every recipe that writes a per-session key queues its local callers here
 * first, keyed by (lease, key): local callers take turns, and only the one at
 * the head of the local queue touches etcd.
 *
 * The queues are per process (see shared.ts): a Mutex from the ESM build and
 * one from the CJS build on one Session must queue together, and so must two
 * versions of the library. So the entry is a plain FIFO chain of promises
 * whose shape this file owns (a new shape gets a new name: `.v1`), not an
 * object of a third-party class another copy might not agree with.
 */

/**
 * One (lease, key)'s local queue, shared by every copy of the library in the
 * process. Contract `local-turns.v1`: the map key is
 * `<leaseId>\u0000<key as hex>`; `tail` settles when the last caller in line
 * has passed its turn on; `users` counts callers in line or holding, and
 * whoever brings it to 0 deletes the entry.
 */
interface Turns {
  tail: Promise<void>;
  users: number;
}

let registry: Map<string, Turns> | undefined;
const turns = (): Map<string, Turns> => (registry ??= processWide('local-turns.v1', () => new Map<string, Turns>()));

/** Releases a local turn; idempotent. */
export type LocalRelease = () => void;

/**
 * Takes the local turn for (lease, key), waiting behind other local callers.
 * Rejects with the signal's reason if it aborts first (the turn, when it
 * comes, is passed on at once).
 */
export async function takeLocalTurn(leaseId: string, key: Buffer, signal?: AbortSignal): Promise<LocalRelease> {
  const map = turns();
  const id = `${leaseId}\u0000${key.toString('hex')}`;
  let entry = map.get(id);
  if (!entry) {
    entry = { tail: Promise.resolve(), users: 0 };
    map.set(id, entry);
  }
  const e = entry;
  e.users++;
  const ahead = e.tail;
  let passOn!: () => void;
  const mine = new Promise<void>((resolve) => {
    passOn = resolve;
  });
  // The next caller's turn comes once ours is passed on, whatever happens to us.
  e.tail = ahead.then(() => mine);
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    passOn();
    if (--e.users === 0 && map.get(id) === e) map.delete(id);
  };
  try {
    await raceAbort(ahead, signal);
  } catch (err) {
    // Our place in the chain stays: the next caller still waits for those ahead of us.
    release();
    throw err;
  }
  return release;
}
