import { describe, expect, it } from 'vitest';
import { isRecipeError, Mutex, RWMutex, Session } from '../src/index.js';
import { useCluster, within } from './helpers.js';

/*
 * The object API (lock()/unlock() on the Mutex or RWMutex object) after the
 * hold was lost behind its back: the one place where the two differ
 * (recipes/locks/object-hold.ts, docs/mutex.md). A Mutex's unlock() ends the
 * hold quietly; an RWMutex's rejects with LOCK_NOT_HELD. Both then take the
 * lock again.
 */

async function lost(signal: AbortSignal): Promise<unknown> {
  return within(
    10_000,
    new Promise<unknown>((resolve) => signal.addEventListener('abort', () => resolve(signal.reason), { once: true })),
    'the holder told of the loss',
  );
}

describe('lock objects after a lost hold', () => {
  const etcd = useCluster();

  it("Mutex.unlock() resolves; RWMutex's unlock and rUnlock reject with LOCK_NOT_HELD", async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });

    const mutex = new Mutex(session, 'objlost/mutex');
    await mutex.lock();
    const mutexSignal = mutex.signal!;
    await client.delete().key(mutex.key);
    expect(isRecipeError(await lost(mutexSignal), 'LOCK_NOT_HELD')).toBe(true);
    expect(mutex.held).toBe(false);
    await mutex.unlock();
    await expect(mutex.unlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    await mutex.lock();
    await mutex.unlock();

    for (const mode of ['write', 'read'] as const) {
      const rw = new RWMutex(session, `objlost/rw-${mode}`);
      await (mode === 'write' ? rw.lock() : rw.rLock());
      const signal = rw.signal!;
      await client.delete().key(rw.key!);
      expect(isRecipeError(await lost(signal), 'LOCK_NOT_HELD')).toBe(true);
      expect(rw.held).toBe(false);
      await expect(mode === 'write' ? rw.unlock() : rw.rUnlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
      await (mode === 'write' ? rw.lock() : rw.rLock());
      await (mode === 'write' ? rw.unlock() : rw.rUnlock());
    }
  });
});
