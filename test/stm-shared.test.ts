import { describe, expect, it } from 'vitest';
import { isRecipeError, runSTM, type STMIsolation } from '../src/index.js';
import { useCluster, within } from './helpers.js';
import { balances, gate, isConflict, kvRequests, openAccounts, randomPair } from './stm-helpers.js';

/*
 * Concurrent transactions on one client share requests (docs/stm.md, "Shared
 * requests"): reads that wait while another read is in flight go out as one
 * Txn, and commits on disjoint keys as nested Txns of one Txn. Sharing must
 * never change what commits.
 */

const guarded: STMIsolation[] = ['serializable-snapshot', 'serializable', 'repeatable-reads'];

/** get(a), then get(b), then put both: the plain transfer, one read at a time. */
const transfer = (
  client: Parameters<typeof runSTM>[0],
  from: string,
  to: string,
  amount: number,
  isolation: STMIsolation,
) =>
  runSTM(
    client,
    async (tx) => {
      const a = Number(await tx.get(from));
      const b = Number(await tx.get(to));
      if (a < amount) return false;
      tx.put(from, String(a - amount));
      tx.put(to, String(b + amount));
      return true;
    },
    { isolation },
  );

describe('runSTM: transactions on one client share requests', () => {
  const etcd = useCluster();

  it('four disjoint transfers started together take three requests in all, and all commit', async () => {
    const client = etcd().client();
    const url = etcd().members[0]!.clientUrl;
    const accounts = await openAccounts(client, 'shared4/', 8, 100);
    // Reads are shared once the client has seen how large values are (none of its reads is shared before).
    await runSTM(client, (tx) => tx.get(accounts[0]!));
    const before = await kvRequests(url);
    const moved = await Promise.all(
      [0, 2, 4, 6].map((i) => transfer(client, accounts[i]!, accounts[i + 1]!, 10, 'serializable-snapshot')),
    );
    const after = await kvRequests(url);
    expect(moved).toEqual([true, true, true, true]);
    // One Txn for the four get(a), one for the four get(b), one nested commit: 3 instead of 12.
    expect(after.total - before.total).toBe(3);
    const values = await balances(client, 'shared4/');
    expect([...values.values()]).toEqual([90, 110, 90, 110, 90, 110, 90, 110]);
  });

  it('a conflict in a shared commit retries only that transaction; the others commit once', async () => {
    const client = etcd().client();
    const meddler = etcd().client();
    const keys = ['sharedc/a', 'sharedc/b', 'sharedc/c'];
    for (const k of keys) await client.put(k).value('0');
    const allRead = [gate(), gate(), gate()];
    const go = gate();
    const runs = [0, 0, 0];
    const done = Promise.all(
      keys.map((key, i) =>
        runSTM(client, async (tx) => {
          runs[i]!++;
          const n = Number(await tx.get(key));
          if (tx.attempt === 1) {
            allRead[i]!.open();
            await go.wait;
          }
          tx.put(key, String(n + 1));
        }),
      ),
    );
    await Promise.all(allRead.map((g) => g.wait));
    await meddler.put('sharedc/b').value('10'); // after b's read: its commit must conflict
    go.open(); // the three commits now leave in the same tick, as one nested Txn
    await done;
    expect(runs).toEqual([1, 2, 1]);
    expect(await Promise.all(keys.map((k) => client.get(k).string()))).toEqual(['1', '11', '1']);
  });

  it('commits and reads that fit etcd one by one but not together still go through, at once', async () => {
    const client = etcd().client();
    const big = 'x'.repeat(700 * 1024); // etcd refuses requests over 1.5 MiB (--max-request-bytes)
    const keys = ['sharedbig/a', 'sharedbig/b', 'sharedbig/c'];
    await Promise.all(keys.map((k) => runSTM(client, (tx) => tx.put(k, big))));
    for (const k of keys) expect((await client.get(k).string())?.length).toBe(big.length);
    // Reads too: each transaction's response fits grpc-js's 4 MiB limit alone, not together.
    const reader = etcd().client();
    // Bounded: a shared response over the limit would fail, and etcd3 would pause the client for seconds.
    const sizes = await within(
      10_000,
      Promise.all(
        [0, 1, 2].map(() => runSTM(reader, (tx) => Promise.all(keys.map((k) => tx.get(k).then((v) => v?.length))))),
      ),
      'reads of large values',
    );
    expect(sizes).toEqual([0, 1, 2].map(() => keys.map(() => big.length)));
  });

  it.each(guarded)('concurrent increments of one key on one client lose none (%s)', async (isolation) => {
    const client = etcd().client();
    const key = `sharedhot-${isolation}/n`;
    await client.put(key).value('0');
    const n = 12;
    await Promise.all(
      Array.from({ length: n }, () =>
        runSTM(
          client,
          async (tx) => {
            tx.put(key, String(Number(await tx.get(key)) + 1));
          },
          { isolation, retries: 100, backoff: { initialMs: 1, maxMs: 20 } },
        ),
      ),
    );
    expect(await client.get(key).string()).toBe(String(n));
  });

  it.each(guarded)('no write skew between commits that leave together (%s)', async (isolation) => {
    // Two doctors on call; each may go off call only if the other stays on. Each transaction reads both
    // and writes only its own key: their write sets are disjoint, their read sets are not.
    const client = etcd().client();
    const p = `sharedskew-${isolation}/`;
    await client.put(`${p}alice`).value('on');
    await client.put(`${p}bob`).value('on');
    const read = [gate(), gate()];
    const go = gate();
    const offCall = (me: string, other: string, i: number) =>
      runSTM(
        client,
        async (tx) => {
          const [mine, theirs] = await Promise.all([tx.get(`${p}${me}`), tx.get(`${p}${other}`)]);
          if (tx.attempt === 1) {
            read[i]!.open();
            await go.wait;
          }
          if (mine === 'on' && theirs === 'on') tx.put(`${p}${me}`, 'off');
        },
        { isolation },
      );
    const done = Promise.all([offCall('alice', 'bob', 0), offCall('bob', 'alice', 1)]);
    await Promise.all(read.map((g) => g.wait));
    go.open(); // both commits leave in the same tick
    await done;
    const states = await Promise.all(['alice', 'bob'].map((d) => client.get(`${p}${d}`).string()));
    expect(states.sort()).toEqual(['off', 'on']);
  });

  it.each(guarded)('conserves a bank total with 8 transfers at a time on one client (%s)', async (isolation) => {
    const client = etcd().client();
    const url = etcd().members[0]!.clientUrl;
    const prefix = `sharedbank-${isolation}/`;
    const accounts = await openAccounts(client, prefix, 20, 100);
    const before = await kvRequests(url);
    let moved = 0;
    let conflicts = 0;
    const each = 25;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let t = 0; t < each; t++) {
          const [i, j] = randomPair(accounts.length);
          try {
            if (await transfer(client, accounts[i]!, accounts[j]!, 1 + Math.floor(Math.random() * 80), isolation)) {
              moved++;
            }
          } catch (err) {
            if (!isConflict(err)) throw err;
            conflicts++;
          }
        }
      }),
    );
    const requests = (await kvRequests(url)).total - before.total;
    const after = await balances(client, prefix);
    expect([...after.values()].reduce((a, b) => a + b, 0)).toBe(20 * 100);
    for (const v of after.values()) expect(v).toBeGreaterThanOrEqual(0);
    expect(moved).toBeGreaterThan(8 * each * 0.5);
    expect(conflicts).toBeLessThan(10);
    // Alone, a transfer takes 3 requests (more on a conflict); shared, clearly fewer.
    expect(requests / (8 * each)).toBeLessThan(2.5);
  });
});

describe('runSTM: shared requests under etcd auth', () => {
  const etcd = useCluster({ auth: true });

  it('a transaction on a forbidden key fails alone with PERMISSION_DENIED; the others commit', async () => {
    const cluster = etcd();
    const user = await cluster.createUser('stm-shared', [{ prefix: 'allowed/' }]);
    const client = cluster.client({ auth: user });
    const admin = cluster.client();
    await admin.put('allowed/a').value('1');
    await admin.put('allowed/b').value('1');
    await admin.put('forbidden/c').value('1');
    const bump = (key: string) =>
      runSTM(client, async (tx) => {
        tx.put(key, String(Number(await tx.get(key)) + 1));
      });
    const outcomes = await Promise.allSettled([bump('allowed/a'), bump('forbidden/c'), bump('allowed/b')]);
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(isRecipeError((outcomes[1] as PromiseRejectedResult).reason, 'PERMISSION_DENIED')).toBe(true);
    // Blind writes: nothing read, so the three commits would be the first requests to share a Txn.
    const write = (key: string) => runSTM(client, (tx) => tx.put(key, 'blind'));
    const writes = await Promise.allSettled([write('allowed/a'), write('forbidden/c'), write('allowed/b')]);
    expect(writes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(isRecipeError((writes[1] as PromiseRejectedResult).reason, 'PERMISSION_DENIED')).toBe(true);
    expect(await admin.get('allowed/a').string()).toBe('blind');
    expect(await admin.get('forbidden/c').string()).toBe('1');
  });
});
