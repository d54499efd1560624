import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { DoubleBarrier, isRecipeError, Session } from '../src/index.js';
import {
  keysUnder,
  rejectsBadNames,
  rejectsInvalid,
  stillPending,
  useCluster,
  waitForKeyCount,
  waitForKeyGone,
  within,
} from './helpers.js';

describe('DoubleBarrier', () => {
  const etcd = useCluster();

  /** `n` participants, each on its own connection and session. */
  async function participants(name: string, count: number, n = count, ttl = 10) {
    const sessions = await Promise.all(Array.from({ length: n }, () => Session.create(etcd().client(), { ttl })));
    return {
      sessions,
      barriers: sessions.map((s) => new DoubleBarrier(s, name, count)),
      async [Symbol.asyncDispose]() {
        await Promise.all(sessions.map((s) => s.close()));
      },
    };
  }

  /** Waits until `key`'s waiters prefix holds at least `n` keys. */
  const waitersAtLeast = (client: Etcd3, name: string, n: number) => waitForKeyCount(client, `${name}/waiters/`, n);

  it("uses Go's layout: <key>/waiters/<19 digits> on the lease, <key>/ready without; nothing left after", async () => {
    const client = etcd().client();
    await using p = await participants('layout/db', 2);
    const [a, b] = p.barriers;
    const entering = a!.enter();
    await waitersAtLeast(client, 'layout/db', 1);
    const kvs = (await client.getAll().prefix('layout/db/').exec()).kvs;
    expect(kvs).toHaveLength(1);
    expect(kvs[0]!.key.toString()).toMatch(/^layout\/db\/waiters\/\d{19}$/);
    expect(kvs[0]!.lease).toBe(p.sessions[0]!.leaseId);
    expect(kvs[0]!.value.length).toBe(0);
    expect(a!.entered).toBe(false);
    await b!.enter();
    await within(10_000, entering, 'first participant');
    expect(a!.entered && b!.entered).toBe(true);
    const all = (await client.getAll().prefix('layout/db/').exec()).kvs;
    const ready = all.find((kv) => kv.key.toString() === 'layout/db/ready');
    expect(ready).toBeDefined();
    expect(ready!.lease).toBe('0');
    expect(ready!.value.length).toBe(0);
    expect(all.map((kv) => kv.key.toString()).sort()).toEqual(
      ['layout/db/ready', a!.participantKey, b!.participantKey].sort(),
    );
    // The round starts once the count-th key exists: ready is newer than every waiter key.
    for (const kv of all) if (kv !== ready) expect(BigInt(kv.create_revision) < BigInt(ready!.mod_revision)).toBe(true);
    await Promise.all([a!.leave(), b!.leave()]);
    expect(a!.entered || b!.entered).toBe(false);
    expect(a!.participantKey).toBeUndefined();
    expect(await keysUnder(client, 'layout/')).toEqual([]);
  });

  it('nobody passes enter() before count have entered, nor leave() before all have left; rounds repeat', async () => {
    const client = etcd().client();
    const name = 'rounds/db';
    await using p = await participants(name, 3);
    const parts = p.barriers;
    for (let round = 0; round < 3; round++) {
      // Staggered arrivals: the first two wait for the third.
      const order = round % 2 === 0 ? [0, 1, 2] : [2, 1, 0];
      const first = parts[order[0]!]!.enter();
      await waitersAtLeast(client, name, 1);
      const second = parts[order[1]!]!.enter();
      await waitersAtLeast(client, name, 2);
      expect(await stillPending(Promise.race([first, second]), 300)).toBe(true);
      await parts[order[2]!]!.enter();
      await within(10_000, Promise.all([first, second]), `round ${round}: waiters after the count was reached`);
      expect(await keysUnder(client, `${name}/waiters/`)).toHaveLength(3);

      // Staggered departures, in an order that makes the oldest key leave first or last.
      const leaveOrder = round === 0 ? [0, 1, 2] : round === 1 ? [1, 2, 0] : [2, 0, 1];
      const l1 = parts[leaveOrder[0]!]!.leave();
      const l2 = parts[leaveOrder[1]!]!.leave();
      expect(await stillPending(Promise.race([l1, l2]), 300)).toBe(true);
      const l3 = parts[leaveOrder[2]!]!.leave();
      await within(10_000, Promise.all([l1, l2, l3]), `round ${round}: leave`);
      expect(await keysUnder(client, `${name}/`)).toEqual([]);
    }
  });

  it('never lets more than count pass: excess entrants get BARRIER_FULL and leave nothing behind', async () => {
    const client = etcd().client();
    const name = 'full/db';
    await using p = await participants(name, 3, 8);
    for (let iteration = 0; iteration < 3; iteration++) {
      const results = await within(20_000, Promise.allSettled(p.barriers.map((b) => b.enter())), 'concurrent entrants');
      const passed = p.barriers.filter((_, i) => results[i]!.status === 'fulfilled');
      const rejected = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(passed).toHaveLength(3);
      expect(rejected).toHaveLength(5);
      for (const r of rejected) expect(isRecipeError(r.reason, 'BARRIER_FULL')).toBe(true);
      // Only the three participants' keys (and ready) remain.
      expect(await keysUnder(client, `${name}/`)).toEqual(
        [`${name}/ready`, ...passed.map((b) => b.participantKey!)].sort(),
      );
      // A round in progress turns newcomers away too, even once some members have left.
      const outsider = p.barriers.find((b) => !b.entered)!;
      await expect(outsider.enter()).rejects.toMatchObject({ code: 'BARRIER_FULL' });
      // The newest member leaves first: it steps out of line (deletes its key) and waits for the others.
      const newestKey = (await client.getAll().prefix(`${name}/waiters/`).sort('Create', 'Ascend').keys()).at(-1)!;
      const newest = passed.find((b) => b.participantKey === newestKey)!;
      const leavingFirst = newest.leave();
      await waitForKeyGone(client, newestKey);
      await expect(outsider.enter()).rejects.toMatchObject({ code: 'BARRIER_FULL' });
      expect(outsider.entered).toBe(false);
      expect(await stillPending(leavingFirst, 100)).toBe(true);
      await within(
        10_000,
        Promise.all([leavingFirst, ...passed.filter((b) => b !== newest).map((b) => b.leave())]),
        'leave',
      );
      expect(await keysUnder(client, `${name}/`)).toEqual([]);
    }
  });

  it("an aborted enter() rejects with the signal's reason and removes its key; others complete the round", async () => {
    const client = etcd().client();
    const name = 'abort-enter/db';
    await using p = await participants(name, 2, 3);
    const [a, b, c] = p.barriers;
    const controller = new AbortController();
    const pending = a!.enter({ signal: controller.signal });
    await waitersAtLeast(client, name, 1);
    const reason = new Error('caller gave up');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    expect(a!.entered).toBe(false);
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
    // Already aborted: nothing is written. A timeout signal bounds the wait.
    await expect(a!.enter({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    const timedOut = await a!.enter({ signal: AbortSignal.timeout(300) }).catch((e: unknown) => e);
    expect((timedOut as Error).name).toBe('TimeoutError');
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
    // The aborted participant did not count: two others make the round.
    const bEnter = b!.enter();
    await waitersAtLeast(client, name, 1);
    expect(await stillPending(bEnter, 200)).toBe(true);
    await c!.enter();
    await within(10_000, bEnter);
    await Promise.all([b!.leave(), c!.leave()]);
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
  });

  it('an aborted leave() removes its key and lets the others finish, whether it was the oldest or not', async () => {
    const client = etcd().client();
    const name = 'abort-leave/db';
    await using p = await participants(name, 2);
    const [a, b] = p.barriers;
    for (const quitter of [0, 1]) {
      // a enters first: its key is the oldest, the one the others wait on.
      const aEnter = a!.enter();
      await waitersAtLeast(client, name, 1);
      await b!.enter();
      await aEnter;
      const q = p.barriers[quitter]!;
      const other = p.barriers[1 - quitter]!;
      const key = q.participantKey!;
      const controller = new AbortController();
      const leaving = q.leave({ signal: controller.signal });
      expect(await stillPending(leaving, 300)).toBe(true);
      const reason = new Error('no time to wait');
      controller.abort(reason);
      await expect(leaving).rejects.toBe(reason);
      expect(q.entered).toBe(false);
      await waitForKeyGone(client, key, 5000);
      await within(10_000, other.leave(), 'the other participant leaves');
      expect(await keysUnder(client, `${name}/`)).toEqual([]);
    }
    // A signal that is already aborted: the participant steps out at once.
    await within(10_000, Promise.all([a!.enter(), b!.enter()]));
    const reason = new Error('shutting down');
    await expect(a!.leave({ signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, `${name}/waiters/`)).toEqual([b!.participantKey]);
    await within(10_000, b!.leave());
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
  });

  it('a participant whose session dies while entering gets SESSION_EXPIRED; others await a replacement', async () => {
    const client = etcd().client();
    const name = 'die-enter/db';
    await using p = await participants(name, 3);
    const [a, c, d] = p.barriers;
    // A short TTL for the one that dies: its own session notices the loss at its next keepalive.
    await using bSession = await Session.create(etcd().client(), { ttl: 3 });
    const b = new DoubleBarrier(bSession, name, 3);
    const aEnter = a!.enter();
    await waitersAtLeast(client, name, 1);
    const bEnter = b.enter();
    await waitersAtLeast(client, name, 2);
    // b's lease ends (what etcd does when a crashed process's TTL runs out).
    await client.leaseClient.leaseRevoke({ ID: bSession.leaseId });
    await expect(within(10_000, bEnter)).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await stillPending(aEnter, 200)).toBe(true);
    expect(await keysUnder(client, `${name}/waiters/`)).toHaveLength(1);
    const cEnter = c!.enter();
    await waitersAtLeast(client, name, 2);
    expect(await stillPending(Promise.race([aEnter, cEnter]), 200)).toBe(true);
    await d!.enter();
    await within(10_000, Promise.all([aEnter, cEnter]), 'a and c after d completed the count');
    await Promise.all([a!.leave(), c!.leave(), d!.leave()]);
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
  });

  it('entering with a lease that etcd no longer has rejects with SESSION_EXPIRED and writes nothing', async () => {
    const client = etcd().client();
    await using session = await Session.create(etcd().client(), { ttl: 30 });
    // Revoked behind the session's back: it only learns at its next keepalive, 10 s away.
    await client.leaseClient.leaseRevoke({ ID: session.leaseId });
    await expect(new DoubleBarrier(session, 'gone/db', 2).enter()).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect(await keysUnder(client, 'gone/')).toEqual([]);
  });

  it('a member whose session dies inside the round counts as left; nothing is left behind', async () => {
    const client = etcd().client();
    for (const dies of ['oldest', 'newest'] as const) {
      const name = `die-round-${dies}/db`;
      await using p = await participants(name, 3);
      const [a, b, c] = p.barriers;
      const aEnter = a!.enter();
      await waitersAtLeast(client, name, 1);
      const bEnter = b!.enter();
      await waitersAtLeast(client, name, 2);
      await c!.enter();
      await Promise.all([aEnter, bEnter]);
      // a holds the oldest key (the others wait on it), c the newest.
      const victim = dies === 'oldest' ? 0 : 2;
      const survivors = p.barriers.filter((_, i) => i !== victim);
      const leaving = survivors.map((s) => s.leave());
      expect(await stillPending(Promise.race(leaving), 300)).toBe(true);
      await client.leaseClient.leaseRevoke({ ID: p.sessions[victim]!.leaseId });
      await within(10_000, Promise.all(leaving), 'survivors leave');
      // The round's ready key went too, although its last member never left.
      expect(await keysUnder(client, `${name}/`)).toEqual([]);
      // The dead member's own leave() reports it.
      await expect(within(10_000, p.barriers[victim]!.leave())).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
      expect(p.barriers[victim]!.entered).toBe(false);
    }
  });

  it('a ready key left behind by a crashed round does not let the next round through early', async () => {
    const client = etcd().client();
    const name = 'stale/db';
    // What a crash leaves: ready (no lease) and no member (their keys expired with their leases).
    await client.put(`${name}/ready`).value('');
    await using p = await participants(name, 2);
    const [a, b] = p.barriers;
    const aEnter = a!.enter();
    await waitersAtLeast(client, name, 1);
    expect(await stillPending(aEnter, 300)).toBe(true);
    await b!.enter();
    await within(10_000, aEnter);
    await Promise.all([a!.leave(), b!.leave()]);
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
  });

  it('participants may share a session: each has its own key', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const parts = Array.from({ length: 3 }, () => new DoubleBarrier(session, 'shared/db', 3));
    await within(10_000, Promise.all(parts.map((b) => b.enter())));
    expect(new Set(parts.map((b) => b.participantKey)).size).toBe(3);
    await within(10_000, Promise.all(parts.map((b) => b.leave())));
    expect(await keysUnder(client, 'shared/')).toEqual([]);
  });

  it('one object is one participant: a second enter() or a leave() without enter() is rejected', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const b = new DoubleBarrier(session, 'misuse/db', 1);
    await expect(b.leave()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await b.enter(); // count 1: passes at once
    await expect(b.enter()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await b.leave();
    await expect(b.leave()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await keysUnder(client, 'misuse/')).toEqual([]);
  });

  it('rejects bad input with INVALID_ARGUMENT before writing anything', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const before = await keysUnder(client);
    const bad = rejectsInvalid;
    await rejectsBadNames((name) => new DoubleBarrier(session, name, 2));
    await bad(() => new DoubleBarrier(session, {} as never, 2));
    for (const count of [0, -1, 1.5, Number.NaN, Infinity, '3', undefined, 2n]) {
      await bad(() => new DoubleBarrier(session, 'bad/db', count as never));
    }
    await bad(() => new DoubleBarrier({} as never, 'bad/db', 2));
    await bad(() => new DoubleBarrier(client as never, 'bad/db', 2));
    const b = new DoubleBarrier(session, 'bad/db', 2);
    await bad(() => b.enter(null as never));
    await bad(() => b.enter({ signal: 'soon' as never }));
    await bad(() => b.enter('fast' as never));
    await bad(() => b.leave({ signal: {} as never }));
    expect(await keysUnder(client)).toEqual(before);
    expect(b.entered).toBe(false);
  });

  /**
   * Go's recipe.DoubleBarrier (etcd main branch), step for step, with raw
   * etcd3 calls: the other side of the wire for an interop test.
   */
  class GoDoubleBarrier {
    myKey: string | undefined;
    constructor(
      readonly client: Etcd3,
      readonly lease: string,
      readonly key: string,
      readonly count: number,
    ) {}

    async #entered() {
      return (await this.client.getAll().prefix(`${this.key}/waiters`).sort('Create', 'Ascend').exec()).kvs;
    }

    /** WaitEvents(key, rev, [type]): the first event of that type at or after rev. */
    async #waitEvent(key: string, rev: string, type: 'put' | 'delete') {
      const watcher = await this.client.watch().key(key).startRevision(rev).create();
      try {
        await new Promise<void>((resolve) => watcher.once(type, () => resolve()));
      } finally {
        await watcher.cancel();
      }
    }

    async enter(): Promise<void> {
      if ((await this.#entered()).length >= this.count) throw new Error('ErrTooManyClients');
      const key = `${this.key}/waiters/${BigInt(Date.now()) * 1_000_000n + BigInt(Math.floor(Math.random() * 1e6))}`;
      const res = await this.client
        .if(key, 'Version', '==', 0)
        .then(this.client.put(key).value('').lease(this.lease))
        .commit();
      if (!res.succeeded) throw new Error('ErrKeyExists');
      this.myKey = key;
      const rev = BigInt(res.header.revision);
      const kvs = await this.#entered();
      if (kvs.length >= this.count) {
        const last = BigInt(kvs[this.count - 1]!.create_revision);
        if (rev > last) {
          await this.client.delete().key(key);
          throw new Error('ErrTooManyClients');
        }
        if (rev === last) {
          await this.client.put(`${this.key}/ready`).value('');
          return;
        }
      }
      await this.#waitEvent(`${this.key}/ready`, rev.toString(), 'put');
    }

    async leave(): Promise<void> {
      const kvs = (await this.client.getAll().prefix(`${this.key}/waiters`).exec()).kvs;
      if (kvs.length === 0) return;
      let lowest = kvs[0]!;
      let highest = kvs[0]!;
      for (const kv of kvs) {
        if (BigInt(kv.mod_revision) < BigInt(lowest.mod_revision)) lowest = kv;
        if (BigInt(kv.mod_revision) > BigInt(highest.mod_revision)) highest = kv;
      }
      const isLowest = lowest.key.toString() === this.myKey;
      if (kvs.length === 1 && isLowest) {
        await this.client.delete().key(`${this.key}/ready`);
        await this.client.delete().key(this.myKey!);
        return;
      }
      if (isLowest) {
        await this.#waitEvent(highest.key.toString(), highest.mod_revision, 'delete');
        return this.leave();
      }
      await this.client.delete().key(this.myKey!);
      await this.#waitEvent(lowest.key.toString(), lowest.mod_revision, 'delete');
      return this.leave();
    }
  }

  it("shares rounds with Go's recipe.DoubleBarrier (its algorithm, run on the same keys)", async () => {
    const client = etcd().client();
    const name = 'go/db';
    await using p = await participants(name, 3, 2);
    const [a, b] = p.barriers;
    await using goSession = await Session.create(etcd().client(), { ttl: 10 });
    // Go arrives first (oldest key: it leaves last) in one round, last (it starts the round) in the next.
    for (const goFirst of [true, false]) {
      const go = new GoDoubleBarrier(etcd().client(), goSession.leaseId, name, 3);
      const entering: Promise<void>[] = [];
      if (goFirst) {
        entering.push(go.enter());
        await waitersAtLeast(client, name, 1);
      }
      entering.push(a!.enter());
      await waitersAtLeast(client, name, goFirst ? 2 : 1);
      entering.push(b!.enter());
      await waitersAtLeast(client, name, goFirst ? 3 : 2);
      if (!goFirst) {
        expect(await stillPending(Promise.race(entering), 300)).toBe(true);
        entering.push(go.enter());
      }
      await within(10_000, Promise.all(entering), 'mixed round: enter');
      // Go waits for our keys to go, ours for Go's.
      const leaving = [go.leave(), a!.leave()];
      expect(await stillPending(Promise.race(leaving), 300)).toBe(true);
      leaving.push(b!.leave());
      await within(10_000, Promise.all(leaving), 'mixed round: leave');
      expect(await keysUnder(client, `${name}/`)).toEqual([]);
    }
    // Go is turned away while a round of ours is full.
    const c = new DoubleBarrier(goSession, name, 3);
    await within(10_000, Promise.all([a!.enter(), b!.enter(), c.enter()]), 'our round');
    await expect(new GoDoubleBarrier(etcd().client(), goSession.leaseId, name, 3).enter()).rejects.toThrow(
      'ErrTooManyClients',
    );
    await within(10_000, Promise.all([a!.leave(), b!.leave(), c.leave()]), 'our round: leave');
    expect(await keysUnder(client, `${name}/`)).toEqual([]);
  });
});
