import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { isRecipeError, observeLeader, runAsLeader, type LeaderContext, type LeaderInfo } from '../src/index.js';
import {
  keysUnder,
  rejectsInvalid,
  spawnWorker,
  stillPending,
  useCluster,
  waitForKey,
  waitForKeyCount,
  within,
  type Worker,
} from './helpers.js';

/** A promise with its resolve function. */
function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** The leader once there is one whose value is not `exclude` (observe-driven, bounded). */
async function nextLeader(client: Etcd3, name: string, exclude?: string): Promise<LeaderInfo> {
  return within(
    30_000,
    (async () => {
      for await (const state of observeLeader(client, name)) {
        if (state.leader && state.leader.value !== exclude) return state.leader;
      }
      throw new Error('observation ended');
    })(),
    `a leader of ${name}`,
  );
}

/** Resolves with the signal's reason once it aborts. */
const aborted = (signal: AbortSignal) =>
  new Promise<unknown>((resolve) => {
    if (signal.aborted) resolve(signal.reason);
    else signal.addEventListener('abort', () => resolve(signal.reason), { once: true });
  });

/** Every lease etcd still has (revoked ones are gone). */
async function liveLeases(client: Etcd3): Promise<string[]> {
  const { leases } = await client.leaseClient.leaseLeases();
  const live: string[] = [];
  for (const l of leases) if (Number((await client.leaseClient.leaseTimeToLive({ ID: l.ID })).TTL) > 0) live.push(l.ID);
  return live;
}

describe('runAsLeader', () => {
  const etcd = useCluster();

  it('runs the task while leader, resigns when it returns, and resolves with its result', async () => {
    const client = etcd().client();
    const before = await liveLeases(client);
    const events: string[] = [];
    const result = await runAsLeader(
      client,
      'run/basic',
      async (signal, ctx) => {
        expect(signal.aborted).toBe(false);
        expect(await keysUnder(client, 'run/basic/')).toEqual([ctx.key]);
        expect(ctx.key).toBe(`run/basic/${ctx.session.leaseHex}`);
        expect(await client.get(ctx.key).string()).toBe('me');
        expect((await ctx.ifLeader().then(client.put('run/basic-data').value('x')).commit()).succeeded).toBe(true);
        events.push('task');
        return 42;
      },
      {
        value: 'me',
        ttl: 5,
        onElected: (ctx) => events.push(`elected ${ctx.revision > 0n}`),
        onDeposed: (reason) => events.push(`deposed ${String(reason)}`),
      },
    );
    expect(result).toBe(42);
    expect(events).toEqual(['elected true', 'task', 'deposed undefined']);
    expect(await keysUnder(client, 'run/basic/')).toEqual([]);
    expect(await liveLeases(client)).toEqual(before);
  });

  it('a task that throws: resigns at once (the next candidate takes over) and rejects with the error', async () => {
    const client = etcd().client();
    const started = deferred();
    const failing = runAsLeader(
      client,
      'run/throw',
      async () => {
        started.resolve();
        await waitForKeyCount(client, 'run/throw/', 2); // a second candidate is queued
        throw new Error('task failed');
      },
      { value: 'a', ttl: 30 },
    );
    await started.promise;
    const t0 = performance.now();
    const second = runAsLeader(etcd().client(), 'run/throw', async (_signal, ctx) => ctx.revision, {
      value: 'b',
      ttl: 30,
    });
    await expect(failing).rejects.toThrow('task failed');
    await within(5000, second, 'next candidate');
    // Promptly, not after the 30 s TTL.
    expect(performance.now() - t0).toBeLessThan(5000);
    expect(await keysUnder(client, 'run/throw/')).toEqual([]);
  });

  it('the outer signal withdraws a campaign, or aborts the running task and resigns once it settled', async () => {
    const client = etcd().client();
    const holding = new AbortController();
    const holder = runAsLeader(client, 'run/abort', (signal) => aborted(signal), {
      value: 'holder',
      ttl: 10,
      signal: holding.signal,
    });
    await waitForKeyCount(client, 'run/abort/', 1);
    // 1. Withdrawn while campaigning: rejects with the reason, its key is gone.
    const c1 = new AbortController();
    let ran = false;
    const waiting = runAsLeader(
      etcd().client(),
      'run/abort',
      () => {
        ran = true;
      },
      { value: 'waiter', ttl: 10, signal: c1.signal },
    );
    await waitForKeyCount(client, 'run/abort/', 2);
    const reason = new Error('shutting down');
    c1.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    expect(ran).toBe(false);
    expect(await keysUnder(client, 'run/abort/')).toHaveLength(1);

    // 2. Aborted while leading: the task's signal aborts with the reason; our key stays until the task settled.
    const ours = deferred<unknown>();
    const release = deferred();
    const keyWhileStopping = deferred<string[]>();
    const c2 = new AbortController();
    holding.abort(new Error('holder done'));
    await expect(holder).rejects.toThrow('holder done');
    const started = deferred();
    const run = runAsLeader(
      client,
      'run/abort',
      async (signal) => {
        started.resolve();
        ours.resolve(await aborted(signal));
        keyWhileStopping.resolve(await keysUnder(client, 'run/abort/'));
        await release.promise;
        return 'late';
      },
      { ttl: 10, signal: c2.signal },
    );
    // Elected and running (the key alone would only say the campaign's Txn landed).
    await within(20_000, started.promise, 'the task to start');
    const stopReason = new Error('stop');
    c2.abort(stopReason);
    expect(await ours.promise).toBe(stopReason);
    expect(await keyWhileStopping.promise).toHaveLength(1); // not resigned while the task still runs
    expect(await stillPending(run, 100)).toBe(true);
    release.resolve();
    await expect(run).rejects.toBe(stopReason);
    expect(await keysUnder(client, 'run/abort/')).toEqual([]);
    await expect(runAsLeader(client, 'run/abort', () => 1, { signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, 'run/abort/')).toEqual([]);
  });

  it("a lost lease aborts the task's signal, elects the next candidate, campaigns again on a new session", async () => {
    const admin = etcd().client();
    const stopA = new AbortController();
    const stopB = new AbortController();
    const termsA: LeaderContext[] = [];
    const deposedA: unknown[] = [];
    const leadersSeen: (LeaderInfo | undefined)[] = [];
    const lossReason = deferred<unknown>();
    const secondTermA = deferred<LeaderContext>();
    const a = runAsLeader(
      etcd().client(),
      'run/loss',
      async (signal, ctx) => {
        termsA.push(ctx);
        if (termsA.length === 1) lossReason.resolve(await aborted(signal));
        else {
          secondTermA.resolve(ctx);
          await aborted(signal);
        }
      },
      {
        value: 'a',
        ttl: 10,
        signal: stopA.signal,
        onDeposed: (r) => deposedA.push(r),
        onNewLeader: (v, l) => {
          expect(v).toBe(l?.value);
          leadersSeen.push(l);
        },
      },
    );
    await waitForKeyCount(admin, 'run/loss/', 1);
    const bElected = deferred<LeaderContext>();
    const b = runAsLeader(
      etcd().client(),
      'run/loss',
      async (signal, ctx) => {
        bElected.resolve(ctx);
        await aborted(signal);
      },
      { value: 'b', ttl: 10, signal: stopB.signal },
    );
    await waitForKeyCount(admin, 'run/loss/', 2);
    expect(termsA).toHaveLength(1);
    const first = termsA[0]!;

    // The lease disappears behind the leader's back (an operator, or expiry on the server).
    await admin.leaseClient.leaseRevoke({ ID: first.session.leaseId });
    const reason = await within(5000, lossReason.promise, 'loss noticed');
    expect(isRecipeError(reason, 'NOT_LEADER') || isRecipeError(reason, 'SESSION_EXPIRED')).toBe(true);
    const bctx = await within(10_000, bElected.promise, 'next candidate elected');
    expect(bctx.revision > first.revision).toBe(true);
    // A stale write of the old term cannot land.
    const stale = await admin
      .if(first.key, 'Create', '==', first.revision.toString())
      .then(admin.put('run/loss-data').value('stale'))
      .commit();
    expect(stale.succeeded).toBe(false);

    // A campaigns again, with a new session, queued behind B.
    await waitForKeyCount(admin, 'run/loss/', 2);
    const keys = await keysUnder(admin, 'run/loss/');
    expect(keys).toContain(bctx.key);
    expect(keys).not.toContain(first.key);
    stopB.abort(new Error('b stops'));
    await expect(b).rejects.toThrow('b stops');
    const second = await within(10_000, secondTermA.promise, 'A elected again');
    expect(second.session.leaseId).not.toBe(first.session.leaseId);
    expect(second.revision > bctx.revision).toBe(true);
    expect(deposedA).toHaveLength(1);
    expect(deposedA[0]).toBe(reason);
    stopA.abort(new Error('a stops'));
    await expect(a).rejects.toThrow('a stops');
    expect(deposedA).toHaveLength(2);
    expect(await keysUnder(admin, 'run/loss/')).toEqual([]);
    // onNewLeader saw A, B, then A again (possibly with "no leader" in between), in that order.
    const values = leadersSeen.map((l) => l?.value ?? '-').filter((v, i, all) => v !== '-' && v !== all[i - 1]);
    expect(values.slice(0, 3)).toEqual(['a', 'b', 'a']);
  });
  it('rejects bad input with INVALID_ARGUMENT before writing anything or granting a lease', async () => {
    const client = etcd().client();
    const keys = await keysUnder(client);
    const leases = await liveLeases(client);
    const task = async () => 1;
    const bad = rejectsInvalid;
    await bad(() => runAsLeader({} as never, 'x', task));
    await bad(() => runAsLeader(client, '', task));
    await bad(() => runAsLeader(client, 'x', 'task' as never));
    await bad(() => runAsLeader(client, 'x', task, null as never));
    await bad(() => runAsLeader(client, 'x', task, { value: 5 as never }));
    await bad(() => runAsLeader(client, 'x', task, { ttl: 0 }));
    await bad(() => runAsLeader(client, 'x', task, { ttl: 2.5 }));
    await bad(() => runAsLeader(client, 'x', task, { signal: {} as never }));
    await bad(() => runAsLeader(client, 'x', task, { onElected: 'yes' as never }));
    await bad(() => runAsLeader(client, 'x', task, { onDeposed: 1 as never }));
    await bad(() => runAsLeader(client, 'x', task, { onNewLeader: {} as never }));
    expect(await keysUnder(client)).toEqual(keys);
    expect(await liveLeases(client)).toEqual(leases);
  });
});

describe('runAsLeader across three worker processes', () => {
  const etcd = useCluster();

  it("when the leader process is killed a new leader's task starts, and no two tasks ever overlap", async () => {
    const cluster = etcd();
    const client = cluster.client();
    await client.put('procs/data/counter').value('0');
    const ids = ['w0', 'w1', 'w2'];
    const workers = new Map<string, Worker>(
      ids.map((id) => [
        id,
        spawnWorker('fixtures/leader-worker.ts', [cluster.endpoints.join(','), 'procs/e', id, '2', 'procs/data']),
      ]),
    );
    try {
      await Promise.all([...workers.values()].map((w) => w.waitFor(/^ready /, 60_000)));
      const logKey = (n: number) => `procs/data/log/${String(n).padStart(6, '0')}`;
      /** Waits until the log has grown by `more` entries from now. */
      const progress = async (more: number) => {
        const n = Number(await client.get('procs/data/counter').string());
        await waitForKey(client, logKey(n + more), 30_000);
      };
      // 1. Once a leader makes progress, SIGKILL it (a crash: its lease runs out after the 2 s TTL).
      const first = await nextLeader(client, 'procs/e');
      const w1 = workers.get(first.value)!;
      await w1.waitFor(/^elected /, 30_000);
      await progress(3);
      w1.kill('SIGKILL');
      await w1.exited;
      // 2. Another worker is elected and works; stop it gracefully (it resigns: a prompt handover).
      const second = await nextLeader(client, 'procs/e', first.value);
      expect(second.revision > first.revision).toBe(true);
      const w2 = workers.get(second.value)!;
      await w2.waitFor(/^elected /, 30_000);
      await progress(3);
      const t0 = performance.now();
      w2.kill('SIGTERM');
      const third = ids.find((id) => id !== first.value && id !== second.value)!;
      const w3 = workers.get(third)!;
      await w3.waitFor(/^elected /, 30_000);
      const handover = performance.now() - t0;
      expect(await w2.exited).toBe(0);
      await progress(3);
      w3.kill('SIGTERM');
      expect(await w3.exited).toBe(0);
      expect(handover).toBeLessThan(2000); // a resign, not the 2 s TTL running out

      // The fenced log: one entry per count (nothing lost or duplicated), terms never interleave
      // (a term's revision never reappears after a later one), each term belongs to one worker.
      const count = Number(await client.get('procs/data/counter').string());
      const log = await client.getAll().prefix('procs/data/log/').sort('Key', 'Ascend').strings();
      const entries = Object.entries(log);
      expect(entries).toHaveLength(count);
      expect(entries.map(([k]) => k)).toEqual(
        Array.from({ length: count }, (_, i) => `procs/data/log/${String(i + 1).padStart(6, '0')}`),
      );
      const terms: { id: string; rev: bigint }[] = [];
      for (const [, v] of entries) {
        const [id, rev] = v.split(' ');
        const last = terms[terms.length - 1];
        if (!last || last.rev !== BigInt(rev!)) {
          expect(!last || BigInt(rev!) > last.rev).toBe(true);
          terms.push({ id: id!, rev: BigInt(rev!) });
        } else expect(id).toBe(last.id);
      }
      expect(terms.map((t) => t.id)).toEqual([first.value, second.value, third]);
      // Real time: the gracefully stopped leader's task ended before its successor's began.
      const endOf2 = Number(w2.lines.find((l) => l.startsWith('task-end '))!.split(' ')[3]);
      const startOf3 = Number(w3.lines.find((l) => l.startsWith('elected '))!.split(' ')[3]);
      expect(startOf3).toBeGreaterThanOrEqual(endOf2);
      expect(await keysUnder(client, 'procs/e/')).toEqual([]);
    } finally {
      for (const w of workers.values()) w.kill('SIGKILL');
    }
  }, 90_000);
});
