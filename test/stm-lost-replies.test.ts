import { Etcd3 } from 'etcd3';
import { afterEach, describe, expect, it } from 'vitest';
import { closeClient, createClient, runSTM, type STMIsolation } from '../src/index.js';
import { FaultProxy } from '../src/testing/index.js';
import { keysUnder, useCluster, waitUntil, within } from './helpers.js';
import { kvRequests } from './stm-helpers.js';

/*
 * A commit whose reply is lost, on a plain `new Etcd3()` client: etcd3 re-sends the Txn by itself, and the
 * copy fails its compares because the first one applied. Taking that for a conflict ran fn again: a
 * transfer applied twice. The commit's receipt proves the first copy landed.
 */
describe('runSTM after a lost commit reply, with etcd3 re-sending it unseen', () => {
  const etcd = useCluster();
  const proxies: FaultProxy[] = [];
  const clients: Etcd3[] = [];
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => closeClient(c)));
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });

  /** A client through a fault proxy: plain (etcd3 re-sends failed calls unseen) or built by createClient. */
  async function viaProxy(kind: 'plain' | 'createClient'): Promise<{ proxy: FaultProxy; client: Etcd3 }> {
    const proxy = await FaultProxy.start(etcd().endpoints[0]!);
    proxies.push(proxy);
    const options = { hosts: proxy.endpoint, grpcOptions: { 'grpc.use_local_subchannel_pool': 1 } };
    const client = kind === 'plain' ? new Etcd3(options) : createClient({ ...options, callTimeoutMs: 500 });
    clients.push(client);
    return { proxy, client };
  }

  const levels: STMIsolation[] = ['serializable-snapshot', 'serializable', 'repeatable-reads', 'read-committed'];

  it.each(levels)('%s: the transfer applies exactly once, and a later deposit survives', async (isolation) => {
    const direct = etcd().client();
    const { proxy, client } = await viaProxy('plain');
    const [a, b] = [`lost-${isolation}/a`, `lost-${isolation}/b`];
    await direct.put(a).value('100');
    await direct.put(b).value('100');

    let runs = 0;
    let caught!: Promise<boolean>;
    let armed!: () => void;
    const committing = new Promise<void>((resolve) => {
      armed = resolve;
    });
    const result = runSTM(
      client,
      async (tx) => {
        runs++;
        const [x, y] = await Promise.all([tx.get(a), tx.get(b)]);
        tx.put(a, String(Number(x) - 10));
        tx.put(b, String(Number(y) + 10));
        if (runs === 1) {
          // The reads are done: the next request of this client is the commit. Lose its reply.
          caught = proxy.dropNextReply();
          armed();
        }
        return runs;
      },
      { isolation },
    );
    await within(10_000, committing, 'fn to run');
    expect(await within(10_000, caught, 'the commit Txn')).toBe(true);
    // The commit applied; its reply is lost. Someone deposits 5 into b before etcd3 re-sends it.
    await waitUntil(
      direct,
      a,
      false,
      async () => ((await direct.get(a).string()) === '90' ? true : undefined),
      10_000,
      'a',
    );
    await direct.put(b).value('115');
    proxy.restore(); // the connection resets; etcd3 re-sends the commit, whose compares now fail
    expect(await within(20_000, result, 'runSTM')).toBe(1);
    expect(runs).toBe(1);
    expect(await direct.get(a).string()).toBe('90');
    expect(await direct.get(b).string()).toBe('115');
    // The receipt goes when the client closes.
    await closeClient(client);
    expect(await keysUnder(direct, '__stm/')).toEqual([]);
  });

  it('createClient: a lost commit reply that cannot be proven rejects with OUTCOME_UNKNOWN, applied once', async () => {
    const direct = etcd().client();
    const { proxy, client } = await viaProxy('createClient');
    await direct.put('unknown/a').value('100');
    await direct.put('unknown/b').value('100');
    let runs = 0;
    let caught!: Promise<boolean>;
    const result = runSTM(client, async (tx) => {
      runs++;
      const [x, y] = await Promise.all([tx.get('unknown/a'), tx.get('unknown/b')]);
      tx.put('unknown/a', String(Number(x) - 10));
      tx.put('unknown/b', String(Number(y) + 10));
      if (runs === 1) caught = proxy.dropNextReply(); // the next request is the commit
    });
    const settled = result.then(
      () => 'committed',
      (err: unknown) => err,
    );
    await waitUntil(
      direct,
      'unknown/a',
      false,
      async () => ((await direct.get('unknown/a').string()) === '90' ? true : undefined),
      10_000,
      'the commit',
    );
    expect(await within(10_000, caught, 'the commit Txn')).toBe(true);
    proxy.restore();
    expect(await within(20_000, settled, 'runSTM')).toMatchObject({ code: 'OUTCOME_UNKNOWN' });
    expect(runs).toBe(1);
    expect(await direct.get('unknown/a').string()).toBe('90');
    expect(await direct.get('unknown/b').string()).toBe('110');
  });

  it('a client built by createClient (no hidden re-sends) writes no receipt and takes 2 requests', async () => {
    const direct = etcd().client();
    const client = createClient({ hosts: etcd().endpoints });
    clients.push(client);
    await direct.put('own/a').value('100');
    await direct.put('own/b').value('100');
    const before = await kvRequests(etcd().members[0]!.clientUrl);
    await runSTM(client, async (tx) => {
      const [x, y] = await Promise.all([tx.get('own/a'), tx.get('own/b')]);
      tx.put('own/a', String(Number(x) - 10));
      tx.put('own/b', String(Number(y) + 10));
    });
    const after = await kvRequests(etcd().members[0]!.clientUrl);
    expect(after.total - before.total).toBe(2);
    expect(await keysUnder(direct, '__stm/')).toEqual([]);
    expect(await direct.get('own/a').string()).toBe('90');
  });
});
