import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { acquireAll, isRecipeError, Mutex, Session, withLocks } from '../src/index.js';
import { findEtcdctlBinary } from '../src/testing/index.js';
import { keysUnder, spawnWorker, useCluster, waitForKeyCount, within } from './helpers.js';

describe('withLocks / acquireAll', () => {
  const etcd = useCluster();

  it('takes Go-layout Mutex keys in sorted, deduplicated order and guards a write by every lock', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    await using held = await acquireAll(session, ['ord/c', 'ord/a', Buffer.from('ord/b'), 'ord/a']);
    expect(held.names.map(String)).toEqual(['ord/a', 'ord/b', 'ord/c']);
    expect(held.keys).toEqual(['a', 'b', 'c'].map((n) => `ord/${n}/${session.leaseHex}`));
    const kvs = (await client.getAll().prefix('ord/').exec()).kvs;
    expect(held.fencingTokens).toEqual(
      held.keys.map((k) => BigInt(kvs.find((kv) => kv.key.toString() === k)!.create_revision)),
    );
    expect(kvs.every((kv) => kv.lease === session.leaseId && kv.value.length === 0)).toBe(true);
    // The guard covers every lock: with one lock key gone, the write is refused.
    expect((await held.ifOwner().then(client.put('ord/out').value('1')).commit()).succeeded).toBe(true);
    await client.delete().key(held.keys[1]!);
    expect((await held.ifOwner().then(client.put('ord/out').value('2')).commit()).succeeded).toBe(false);
    expect(await client.get('ord/out').string()).toBe('1');
  });

  it('is all or none: an aborted acquire releases the locks it took and leaves no key', async () => {
    const client = etcd().client();
    await using other = await Session.create(client, { ttl: 10 });
    const blocker = await new Mutex(other, 'aon/b').acquire();
    await using session = await Session.create(client, { ttl: 10 });
    const stop = new AbortController();
    const pending = acquireAll(session, ['aon/b', 'aon/a'], { signal: stop.signal });
    // Holding a, queued on b: both our keys exist.
    await waitForKeyCount(client, 'aon/b/', 2);
    expect(await keysUnder(client, 'aon/a/')).toEqual([`aon/a/${session.leaseHex}`]);
    stop.abort(new Error('gave up'));
    await expect(pending).rejects.toThrow('gave up');
    expect(await keysUnder(client, 'aon/')).toEqual([blocker.key]);
    await blocker.release();
  });

  it("aborts the handle's signal when any lock is lost, and withLocks releases everything", async () => {
    const client = etcd().client();
    const admin = etcd().client();
    const session = await Session.create(client, { ttl: 10 });
    const held = await acquireAll(session, ['lost/a', 'lost/b']);
    const aborted = new Promise((resolve) =>
      held.signal.addEventListener('abort', () => resolve(held.signal.reason), { once: true }),
    );
    await admin.leaseClient.leaseRevoke({ ID: session.leaseId });
    expect(isRecipeError(await within(10_000, aborted), 'SESSION_EXPIRED')).toBe(true);
    expect(held.released).toBe(true);
    expect(() => held.ifOwner()).toThrow(expect.objectContaining({ code: 'LOCK_NOT_HELD' }));
    await held.release();
    await session.close();

    const result = await withLocks(
      client,
      ['w/b', 'w/a'],
      async (ctx) => {
        expect(ctx.names).toEqual(['w/a', 'w/b']);
        expect(await keysUnder(client, 'w/')).toHaveLength(2);
        return ctx.fencingTokens.length;
      },
      { ttl: 5 },
    );
    expect(result).toBe(2);
    expect(await keysUnder(client, 'w/')).toEqual([]);
  });

  it('rejects bad input before writing anything', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    await expect(acquireAll(session, [])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'names' });
    await expect(acquireAll(session, ['ok', ''])).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'names[1]',
    });
    await expect(acquireAll({} as Session, ['a'])).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'session',
    });
    await expect(withLocks(client, 'a' as never, () => 1)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'names',
    });
    await expect(withLocks(client, ['a'], () => 1, { ttl: 0 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'options.ttl',
    });
    expect(await keysUnder(client)).not.toContain('ok');
  });

  it("waits for a lock held by etcdctl lock (Go's Mutex) and takes it when etcdctl lets go", async () => {
    const cluster = etcd();
    const client = cluster.client();
    const go = spawn(
      process.env.ETCDCTL_BIN ?? findEtcdctlBinary(),
      ['--endpoints', cluster.endpoints[0]!, 'lock', 'golock/b'],
      {
        stdio: ['ignore', 'ignore', 'ignore'],
        env: { ...process.env, ETCDCTL_API: '3' },
      },
    );
    const exited = new Promise((resolve) => go.on('exit', resolve));
    try {
      await waitForKeyCount(client, 'golock/b/', 1);
      let ran = false;
      const running = withLocks(
        client,
        ['golock/b', 'golock/a'],
        () => {
          ran = true;
        },
        { ttl: 5 },
      );
      await waitForKeyCount(client, 'golock/b/', 2); // queued behind etcdctl, holding a
      expect(ran).toBe(false);
      go.kill('SIGTERM');
      await within(20_000, running);
      expect(ran).toBe(true);
    } finally {
      if (go.exitCode === null) go.kill('SIGTERM');
      await exited;
    }
  });

  it('4 processes locking overlapping sets in random orders: no deadlock, exclusion for every name', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const names = ['ml/a', 'ml/b', 'ml/c', 'ml/d', 'ml/e'];
    const rounds = Number(process.env.MULTI_LOCK_ROUNDS ?? 200);
    const workers = [0, 1, 2, 3].map((i) =>
      spawnWorker('fixtures/multi-locker.ts', [
        cluster.endpoints.join(','),
        names.join(','),
        String(rounds),
        i % 2 ? 'with' : 'handle',
        `p${i}`,
      ]),
    );
    const started = performance.now();
    const results: { counts: Record<string, number>; violations: number; ms: number }[] = [];
    try {
      for (const w of workers) results.push(JSON.parse((await w.waitFor(/^done /, 170_000)).slice(5)));
    } finally {
      for (const w of workers) w.kill('SIGTERM');
      await Promise.all(workers.map((w) => w.exited));
    }
    console.log(
      `multi-lock: 4 x ${rounds} rounds in ${Math.round(performance.now() - started)} ms ` +
        `(${results.map((r) => r.ms).join(', ')})`,
    );
    expect(results.map((r) => r.violations)).toEqual([0, 0, 0, 0]);
    for (const name of names) {
      const expected = results.reduce((sum, r) => sum + (r.counts[name] ?? 0), 0);
      expect(Number((await client.get(`cnt/${name}`).string()) ?? 0)).toBe(expected);
    }
    expect(
      results.reduce((sum, r) => sum + Object.values(r.counts).reduce((a, b) => a + b, 0), 0),
    ).toBeGreaterThanOrEqual(4 * rounds * 2);
    expect(await keysUnder(client, 'ml/')).toEqual([]);
    expect(await keysUnder(client, 'occ/')).toEqual([]);
  }, 180_000);
});
