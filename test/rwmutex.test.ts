import { describe, expect, it } from 'vitest';
import { isRecipeError, RWMutex, Session, type RWLockHandle } from '../src/index.js';
import {
  keysUnder,
  rejectsBadNames,
  rejectsInvalid,
  stillPending,
  useCluster,
  waitForKeyCount,
  within,
} from './helpers.js';

describe('RWMutex', () => {
  const etcd = useCluster();

  it("uses Go's recipes layout: <name>/read/<19 digits>, <name>/write/<19 digits>, empty, on the lease", async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const rw = new RWMutex(session, 'layout/rw');
    const r = await rw.acquireRead();
    expect(r.key).toMatch(/^layout\/rw\/read\/\d{19}$/);
    await r.release();
    await rw.lock();
    expect(rw.key).toMatch(/^layout\/rw\/write\/\d{19}$/);
    expect(rw.mode).toBe('write');
    const kvs = (await client.getAll().prefix('layout/rw/').exec()).kvs;
    expect(kvs).toHaveLength(1);
    expect(kvs[0]!.key.toString()).toBe(rw.key);
    expect(kvs[0]!.value.length).toBe(0);
    expect(kvs[0]!.lease).toBe(session.leaseId);
    expect(rw.fencingToken).toBe(BigInt(kvs[0]!.create_revision));
    await rw.unlock();
    expect(rw.held).toBe(false);
    expect(await keysUnder(client, 'layout/')).toEqual([]);
  });

  it('never lets a writer in with anyone, lets readers share, and readers see a stable value', async () => {
    const admin = etcd().client();
    const dataKey = 'ex/data';
    await admin.put(dataKey).value('0');
    let readers = 0;
    let writers = 0;
    let maxReaders = 0;
    let violations = 0;
    let writes = 0;
    const workers = 6;
    const rounds = 8;
    await within(
      60_000,
      Promise.all(
        Array.from({ length: workers }, async (_, w) => {
          const client = etcd().client();
          await using session = await Session.create(client, { ttl: 10 });
          const rw = new RWMutex(session, 'ex/rw');
          for (let i = 0; i < rounds; i++) {
            if ((w + i) % 3 === 0) {
              await using held = await rw.acquireWrite();
              writers++;
              if (writers > 1 || readers > 0) violations++;
              const n = Number(await client.get(dataKey).string());
              await new Promise((r) => setImmediate(r));
              expect(
                (
                  await held
                    .ifOwner()
                    .then(client.put(dataKey).value(String(n + 1)))
                    .commit()
                ).succeeded,
              ).toBe(true);
              writes++;
              writers--;
            } else {
              await using held = await rw.acquireRead();
              readers++;
              maxReaders = Math.max(maxReaders, readers);
              if (writers > 0) violations++;
              const before = await client.get(dataKey).string();
              await new Promise((r) => setTimeout(r, 2));
              // No writer can have run while we held the read lock.
              expect(await client.get(dataKey).string()).toBe(before);
              expect(held.signal.aborted).toBe(false);
              readers--;
            }
          }
        }),
      ),
      'mixed run',
    );
    expect(violations).toBe(0);
    expect(Number(await admin.get(dataKey).string())).toBe(writes);
    expect(writes).toBeGreaterThan(0);
    expect(maxReaders).toBeGreaterThan(1);
    expect(await keysUnder(admin, 'ex/rw/')).toEqual([]);
  });

  it('lets many readers hold at once', async () => {
    const client = etcd().client();
    const sessions = await Promise.all(Array.from({ length: 5 }, () => Session.create(etcd().client(), { ttl: 10 })));
    const handles = await within(
      10_000,
      Promise.all(sessions.map((s) => new RWMutex(s, 'share/rw').acquireRead())),
      'readers',
    );
    expect(handles.every((h) => !h.released)).toBe(true);
    expect(await keysUnder(client, 'share/rw/read/')).toHaveLength(5);
    // A writer must wait for all of them.
    await using ws = await Session.create(client, { ttl: 10 });
    const writer = new RWMutex(ws, 'share/rw').acquireWrite();
    await waitForKeyCount(client, 'share/rw/write/', 1);
    for (const h of handles.slice(0, 4)) await h.release();
    expect(await stillPending(writer, 200)).toBe(true);
    await handles[4]!.release();
    await (await within(10_000, writer, 'writer')).release();
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('does not starve a writer: readers arriving after a waiting writer wait for it', async () => {
    const client = etcd().client();
    await using s0 = await Session.create(client, { ttl: 10 });
    const first = await new RWMutex(s0, 'starve/rw').acquireRead();
    const order: string[] = [];
    await using ws = await Session.create(etcd().client(), { ttl: 10 });
    const writer = new RWMutex(ws, 'starve/rw').acquireWrite().then((h) => {
      order.push('W');
      return h;
    });
    await waitForKeyCount(client, 'starve/rw/write/', 1);
    // A stream of readers, each queued after the writer, while only a reader holds.
    const sessions: Session[] = [];
    const readers: Promise<RWLockHandle>[] = [];
    for (let i = 0; i < 5; i++) {
      const s = await Session.create(etcd().client(), { ttl: 10 });
      sessions.push(s);
      readers.push(
        new RWMutex(s, 'starve/rw').acquireRead().then((h) => {
          order.push(`R${i}`);
          return h;
        }),
      );
      await waitForKeyCount(client, 'starve/rw/read/', i + 2);
    }
    expect(await stillPending(Promise.race(readers), 300)).toBe(true);
    await first.release();
    const w = await within(10_000, writer, 'writer');
    expect(await stillPending(Promise.race(readers), 200)).toBe(true);
    await w.release();
    // Once the writer is done, all the readers behind it hold together.
    const held = await within(10_000, Promise.all(readers), 'readers');
    expect(order[0]).toBe('W');
    expect(held.every((h) => !h.released)).toBe(true);
    await Promise.all(held.map((h) => h.release()));
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('serves a mixed line in arrival order: W1, then R1 alone, then W2, then R2', async () => {
    const client = etcd().client();
    const sessions = await Promise.all(Array.from({ length: 5 }, () => Session.create(etcd().client(), { ttl: 10 })));
    const rw = sessions.map((s) => new RWMutex(s, 'line/rw'));
    const r0 = await rw[0]!.acquireRead();
    const events: string[] = [];
    const track = (name: string, p: Promise<RWLockHandle>) =>
      p.then((h) => {
        events.push(name);
        return h;
      });
    const w1 = track('W1', rw[1]!.acquireWrite());
    await waitForKeyCount(client, 'line/rw/', 2);
    const r1 = track('R1', rw[2]!.acquireRead());
    await waitForKeyCount(client, 'line/rw/', 3);
    const w2 = track('W2', rw[3]!.acquireWrite());
    await waitForKeyCount(client, 'line/rw/', 4);
    const r2 = track('R2', rw[4]!.acquireRead());
    await waitForKeyCount(client, 'line/rw/', 5);
    await r0.release();
    await (await within(10_000, w1)).release();
    const r1h = await within(10_000, r1);
    // R2 is a reader too, but W2 queued before it: R2 must not join R1.
    expect(await stillPending(r2, 200)).toBe(true);
    await r1h.release();
    await (await within(10_000, w2)).release();
    await (await within(10_000, r2)).release();
    expect(events).toEqual(['W1', 'R1', 'W2', 'R2']);
    // Fencing tokens follow the line.
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('serves writers in FIFO order and their fencing tokens increase', async () => {
    const client = etcd().client();
    await using s0 = await Session.create(client, { ttl: 10 });
    const holder = await new RWMutex(s0, 'fifo/rw').acquireWrite();
    const order: number[] = [];
    const tokens: bigint[] = [];
    const sessions: Session[] = [];
    const waiters: Promise<void>[] = [];
    for (let i = 0; i < 5; i++) {
      const s = await Session.create(etcd().client(), { ttl: 10 });
      sessions.push(s);
      waiters.push(
        new RWMutex(s, 'fifo/rw').acquireWrite().then(async (h) => {
          order.push(i);
          tokens.push(h.fencingToken);
          await h.release();
        }),
      );
      await waitForKeyCount(client, 'fifo/rw/write/', i + 2);
    }
    await holder.release();
    await within(20_000, Promise.all(waiters), 'writers');
    expect(order).toEqual([0, 1, 2, 3, 4]);
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]! > tokens[i - 1]!).toBe(true);
    await Promise.all(sessions.map((s) => s.close()));
  });

  it('aborting a waiting reader or writer rejects with the reason and leaves no key', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const writer = await new RWMutex(a, 'abort/rw').acquireWrite();
    const rw = new RWMutex(b, 'abort/rw');
    const reason = new Error('caller gave up');
    const c1 = new AbortController();
    const reading = rw.rLock({ signal: c1.signal });
    await waitForKeyCount(client, 'abort/rw/', 2);
    c1.abort(reason);
    await expect(reading).rejects.toBe(reason);
    expect(rw.held).toBe(false);
    expect(await keysUnder(client, 'abort/rw/')).toEqual([writer.key]);
    const c2 = new AbortController();
    const writing = rw.acquireWrite({ signal: c2.signal });
    await waitForKeyCount(client, 'abort/rw/', 2);
    c2.abort(reason);
    await expect(writing).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/rw/')).toEqual([writer.key]);
    // A timeout signal works as a lock timeout; an already-aborted one writes nothing.
    const err = await rw.acquireRead({ signal: AbortSignal.timeout(150) }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('TimeoutError');
    await expect(rw.lock({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, 'abort/rw/')).toEqual([writer.key]);
    // The object is usable afterwards.
    await writer.release();
    await rw.rLock();
    await rw.rUnlock();
  });

  it('a waiter whose session expires rejects with SESSION_EXPIRED instead of acquiring', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    // Short TTLs: a session notices a revoked lease at its next keepalive (every TTL/3).
    const b = await Session.create(etcd().client(), { ttl: 3 });
    const c = await Session.create(etcd().client(), { ttl: 3 });
    const writer = await new RWMutex(a, 'jepsen/rw').acquireWrite();
    const reading = new RWMutex(b, 'jepsen/rw').acquireRead().catch((e: unknown) => e);
    const writing = new RWMutex(c, 'jepsen/rw').acquireWrite().catch((e: unknown) => e);
    await waitForKeyCount(client, 'jepsen/rw/', 3);
    await client.leaseClient.leaseRevoke({ ID: b.leaseId });
    await client.leaseClient.leaseRevoke({ ID: c.leaseId });
    expect(await within(10_000, reading)).toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await within(10_000, writing)).toMatchObject({ code: 'SESSION_EXPIRED' });
    await writer.release();
  });

  it('an acquire on a lease etcd already dropped rejects with SESSION_EXPIRED and writes nothing', async () => {
    const client = etcd().client();
    const session = await Session.create(etcd().client(), { ttl: 30 });
    await client.leaseClient.leaseRevoke({ ID: session.leaseId }); // behind the session's back
    const rw = new RWMutex(session, 'gone/rw');
    await expect(rw.acquireRead()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    await expect(rw.lock()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await keysUnder(client, 'gone/')).toEqual([]);
    await session.close();
  });

  it('a holder whose session is lost is told through its signal, and the next writer takes over', async () => {
    const client = etcd().client();
    const a = await Session.create(client, { ttl: 3 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const reader = await new RWMutex(a, 'lost/rw').acquireRead();
    const writer = new RWMutex(b, 'lost/rw').acquireWrite();
    await waitForKeyCount(client, 'lost/rw/', 2);
    await client.leaseClient.leaseRevoke({ ID: a.leaseId });
    const reason = await within(
      10_000,
      new Promise<unknown>((resolve) => {
        reader.signal.addEventListener('abort', () => resolve(reader.signal.reason), { once: true });
      }),
      'holder signal',
    );
    expect(isRecipeError(reason, 'SESSION_EXPIRED')).toBe(true);
    const w = await within(10_000, writer, 'writer');
    expect(w.fencingToken > reader.fencingToken).toBe(true);
    expect(() => reader.ifOwner()).toThrow(expect.objectContaining({ code: 'LOCK_NOT_HELD' }));
    await reader.release();
    await w.release();
  });

  it('keys are per call: two write handles of one session exclude each other, read handles share', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const rw = new RWMutex(session, 'one/rw');
    const r1 = await rw.acquireRead();
    const r2 = await within(5000, rw.acquireRead(), 'second read on one session');
    expect(r1.key).not.toBe(r2.key);
    await r1.release();
    await r2.release();
    const w1 = await rw.acquireWrite();
    const w2 = rw.acquireWrite();
    expect(await stillPending(w2, 200)).toBe(true);
    await w1.release();
    const w2h = await within(5000, w2);
    expect(w2h.fencingToken > w1.fencingToken).toBe(true);
    await w2h.release();
    expect(await keysUnder(client, 'one/rw/')).toEqual([]);
  });

  it("interoperates with keys in Go's layout: a Go writer blocks our reader, a Go reader only our writer", async () => {
    const client = etcd().client();
    const lease = client.lease(10, { autoKeepAlive: false });
    const goWriter = `go/rw/write/${BigInt(Date.now()) * 1_000_000n}`;
    await lease.put(goWriter).value('');
    await using session = await Session.create(client, { ttl: 10 });
    const rw = new RWMutex(session, 'go/rw');
    const reading = rw.acquireRead();
    expect(await stillPending(reading, 200)).toBe(true);
    await client.delete().key(goWriter);
    await (await within(5000, reading)).release();
    const goReader = `go/rw/read/${BigInt(Date.now()) * 1_000_000n}`;
    await lease.put(goReader).value('');
    await (await within(5000, rw.acquireRead(), 'our reader next to a Go reader')).release();
    const writing = rw.acquireWrite();
    expect(await stillPending(writing, 200)).toBe(true);
    await client.delete().key(goReader);
    await (await within(5000, writing)).release();
    await lease.revoke();
  });

  it('tryRLock / tryLock never wait and leave no key when they fail', async () => {
    const client = etcd().client();
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(etcd().client(), { ttl: 10 });
    const ra = new RWMutex(a, 'try/rw');
    const rb = new RWMutex(b, 'try/rw');
    expect(await ra.tryRLock()).toBe(true);
    expect(await rb.tryRLock()).toBe(true);
    expect(await rb.tryAcquireWrite()).toBeUndefined();
    await rb.rUnlock();
    expect(await rb.tryLock()).toBe(false);
    expect(rb.held).toBe(false);
    expect(await keysUnder(client, 'try/rw/')).toEqual([ra.key]);
    await ra.rUnlock();
    expect(await rb.tryLock()).toBe(true);
    expect(await ra.tryRLock()).toBe(false);
    expect(await ra.tryAcquireRead()).toBeUndefined();
    expect(await keysUnder(client, 'try/rw/')).toEqual([rb.key]);
    await rb.unlock();
  });

  it('the object API tracks one hold and rejects reentrancy, upgrade and wrong unlocks', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const rw = new RWMutex(session, 'misuse/rw');
    await expect(rw.rUnlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    await expect(rw.unlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    expect(() => rw.ifOwner()).toThrow(expect.objectContaining({ code: 'LOCK_NOT_HELD' }));
    await rw.rLock();
    expect(rw.mode).toBe('read');
    expect(rw.signal?.aborted).toBe(false);
    // An upgrade would wait for our own read lock forever: rejected at once.
    await expect(rw.lock()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(rw.rLock()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(rw.unlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    expect((await rw.ifOwner().then(client.put('misuse/data').value('x')).commit()).succeeded).toBe(true);
    const signal = rw.signal!;
    await rw.rUnlock();
    expect(signal.aborted).toBe(true);
    expect(rw.signal).toBeUndefined();
    await expect(rw.rUnlock()).rejects.toMatchObject({ code: 'LOCK_NOT_HELD' });
    expect(await keysUnder(client, 'misuse/rw/')).toEqual([]);
  });

  it('rejects bad input with INVALID_ARGUMENT before writing anything', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const before = await keysUnder(client);
    const bad = rejectsInvalid;
    await rejectsBadNames((name) => new RWMutex(session, name));
    await bad(() => new RWMutex({} as never, 'x'));
    const rw = new RWMutex(session, 'bad/rw');
    await bad(() => rw.rLock({ signal: 'soon' as never }));
    await bad(() => rw.lock(null as never));
    await bad(() => rw.acquireRead({ signal: {} as never }));
    await bad(() => rw.acquireWrite(5 as never));
    await bad(() => rw.tryAcquireRead({ signal: 1 as never }));
    expect(await keysUnder(client)).toEqual(before);
  });
});
