import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { Mutex, Session } from '../src/index.js';
import { openWatch } from '../src/core/watch-hub.js';
import { findEtcdctlBinary } from '../src/testing/index.js';
import { keysUnder, spawnWorker, stillPending, useCluster, waitForKey, waitForKeyCount, within } from './helpers.js';

/** Runs `etcdctl lock <name>`; resolves `acquired` with the key it prints once it holds the lock. */
function etcdctlLock(endpoint: string, name: string) {
  const child = spawn(
    process.env.ETCDCTL_BIN ?? findEtcdctlBinary(),
    ['--endpoints', endpoint, 'lock', '--ttl', '10', name],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ETCDCTL_API: '3' },
    },
  );
  const lines = createInterface({ input: child.stdout! });
  const acquired = new Promise<string>((resolve) => lines.once('line', resolve));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  // SIGTERM, not SIGKILL: etcdctl then unlocks; SIGKILL would leave its key for the whole TTL.
  return { child, acquired, exited, release: () => child.kill('SIGTERM') };
}

describe("Mutex interoperates with etcdctl lock (Go's concurrency.Mutex)", () => {
  const etcd = useCluster();

  it('waits while etcdctl holds the lock, then takes it', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const ctl = etcdctlLock(cluster.endpoints[0]!, 'interop/a');
    const ctlKey = await within(15_000, ctl.acquired, 'etcdctl lock');
    expect(ctlKey).toMatch(/^interop\/a\/[0-9a-f]+$/);
    await using session = await Session.create(client, { ttl: 10 });
    const m = new Mutex(session, 'interop/a');
    const locking = m.lock();
    await waitForKey(client, m.key);
    expect(await stillPending(locking, 300)).toBe(true);
    ctl.release();
    await within(10_000, locking, 'our lock after etcdctl released');
    expect(await ctl.exited).toBe(0);
    expect(await keysUnder(client, 'interop/a/')).toEqual([m.key]);
    await m.unlock();
  });

  it('etcdctl waits while we hold the lock, then takes it', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using session = await Session.create(client, { ttl: 10 });
    const m = new Mutex(session, 'interop/b');
    await m.lock();
    const ctl = etcdctlLock(cluster.endpoints[0]!, 'interop/b');
    try {
      await waitForKeyCount(client, 'interop/b/', 2); // etcdctl queued behind us
      expect(await stillPending(ctl.acquired, 300)).toBe(true);
      await m.unlock();
      const ctlKey = await within(10_000, ctl.acquired, 'etcdctl lock after our unlock');
      expect(await keysUnder(client, 'interop/b/')).toEqual([ctlKey]);
    } finally {
      ctl.release();
    }
    expect(await ctl.exited).toBe(0);
    expect(await keysUnder(client, 'interop/b/')).toEqual([]);
  });
});

describe('Mutex when a holder process dies', () => {
  const etcd = useCluster();

  it("a SIGKILLed holder's lock passes to the next waiter after its lease expires", async () => {
    const cluster = etcd();
    const client = cluster.client();
    const holder = spawnWorker('fixtures/lock-holder.ts', [cluster.endpoints.join(','), 'crash/lock', '2']);
    const line = await holder.waitFor(/^acquired /);
    const [, holderKey, holderToken] = line.split(' ');
    await using session = await Session.create(client, { ttl: 10 });
    const m = new Mutex(session, 'crash/lock');
    const locking = m.lock();
    await waitForKey(client, m.key);
    holder.kill('SIGKILL');
    await holder.exited;
    await within(15_000, locking, 'lock after the holder died');
    expect(await keysUnder(client, 'crash/lock/')).toEqual([m.key]);
    expect(await client.get(holderKey!).string()).toBeNull();
    expect(m.fencingToken! > BigInt(holderToken!)).toBe(true);
    await m.unlock();
  });
});

describe('Mutex across an etcd restart', () => {
  const etcd = useCluster();

  it('a waiter keeps waiting through a single-member restart and then acquires', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using a = await Session.create(client, { ttl: 15 });
    await using b = await Session.create(cluster.client(), { ttl: 15 });
    const holder = new Mutex(a, 'restart/lock');
    await holder.lock();
    const waiter = new Mutex(b, 'restart/lock');
    const locking = waiter.lock();
    await waitForKey(client, waiter.key);
    await cluster.members[0]!.restart();
    await cluster.waitHealthy();
    expect(await stillPending(locking, 200)).toBe(true);
    await holder.unlock();
    await within(20_000, locking, 'lock after restart');
    expect(a.expired || b.expired).toBe(false);
    expect(await keysUnder(client, 'restart/lock/')).toEqual([waiter.key]);
    await waiter.unlock();
  });
});

describe('Mutex aborted while its acquire Txn is in flight', () => {
  const etcd = useCluster();

  it('removes the key that Txn creates when it lands after the abort', async () => {
    const cluster = etcd();
    // etcd3 resolves a call's options as it hands the call to gRPC: from then on the call is sent whatever
    // its caller does (an abort stops the waiting, not the call). That is the event that the Txn has left.
    let onKeyTxn: (() => void) | undefined;
    const client = cluster.client({
      defaultCallOptions: (call) => {
        const params = 'params' in call ? (call.params as { success?: { request_put?: unknown }[] }) : undefined;
        const success = params?.success;
        if (call.method === 'txn' && success?.some((o) => o.request_put)) onKeyTxn?.();
        return {};
      },
    });
    await using session = await Session.create(client, { ttl: 20 });
    const m = new Mutex(session, 'inflight/lock');
    await m.tryLock(); // connections are up before etcd freezes
    await m.unlock();
    const events: string[] = [];
    let deleted!: () => void;
    const gone = new Promise<void>((resolve) => {
      deleted = resolve;
    });
    // Watching from after the warm-up: only what the aborted call does shows up.
    const watch = await openWatch(
      cluster.client(),
      { key: Buffer.from(m.key) },
      {
        onEvents: (evs) =>
          evs.forEach((e) => {
            events.push(e.type);
            if (e.type === 'delete') deleted();
          }),
        onEnd: () => undefined,
      },
    );
    try {
      cluster.members[0]!.pause();
      const controller = new AbortController();
      const keyTxnSent = new Promise<void>((resolve) => {
        onKeyTxn = resolve;
      });
      const locking = m.lock({ signal: controller.signal });
      await within(5000, keyTxnSent, 'the Txn that creates the key to be sent');
      const reason = new Error('gave up');
      controller.abort(reason);
      await expect(within(5000, locking)).rejects.toBe(reason);
      cluster.members[0]!.resume();
      await within(15_000, gone, 'the late key to be removed');
      expect(events).toEqual(['put', 'delete']);
      expect(await keysUnder(client, 'inflight/')).toEqual([]);
    } finally {
      if (cluster.members[0]!.state === 'paused') cluster.members[0]!.resume();
      watch.close();
    }
  });
});

describe('Mutex in a 3-member cluster when the Raft leader is killed', () => {
  const etcd = useCluster({ members: 3 });

  it('stays exclusive and keeps serving waiters', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    await admin.put('ha/counter').value('0');
    const workers = 5;
    const rounds = 12;
    let inside = 0;
    let maxInside = 0;
    let sections = 0;
    let killed: Promise<void> | undefined;
    await within(
      120_000,
      Promise.all(
        Array.from({ length: workers }, async () => {
          const client = cluster.client();
          await using session = await Session.create(client, { ttl: 10 });
          const m = new Mutex(session, 'ha/lock');
          for (let i = 0; i < rounds; i++) {
            await using held = await m.acquire();
            inside++;
            maxInside = Math.max(maxInside, inside);
            const n = Number(await client.get('ha/counter').string());
            const res = await held
              .ifOwner()
              .then(client.put('ha/counter').value(String(n + 1)))
              .commit();
            expect(res.succeeded).toBe(true);
            sections++;
            // Kill the leader once, a little way into the run, while others are queued.
            if (sections === 10) killed = cluster.leader().then((leader) => leader.kill());
            inside--;
          }
        }),
      ),
      'contended run',
    );
    await killed;
    expect(maxInside).toBe(1);
    expect(sections).toBe(workers * rounds);
    expect(await admin.get('ha/counter').string()).toBe(String(workers * rounds));
    expect(await keysUnder(admin, 'ha/lock/')).toEqual([]);
  });
});
