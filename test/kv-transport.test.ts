import { Etcd3, type IOptions } from 'etcd3';
import { afterEach, describe, expect, it } from 'vitest';
import { installLeanKV } from '../src/core/lean-kv.js';
import { closeClient, createClient } from '../src/index.js';
import { FaultProxy } from '../src/testing/index.js';
import { useCluster } from './helpers.js';

/*
 * The lean KV transport (core/lean-kv.ts) stands in for grpc-js under
 * etcd3: what etcd3 and the recipes see of a call must not change. Each
 * call here goes through a `createClient` client of each transport, against
 * the same etcd state, and the two answers must be the same.
 */

const clients: Etcd3[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => closeClient(c)));
});

type RawKV = Record<string, (request: object) => Promise<unknown>>;
const raw = (client: Etcd3) => client.kv as unknown as RawKV;

/** The settled outcome of a call, comparable across transports: the reply, or the error's class and message. */
async function outcome(call: Promise<unknown>): Promise<unknown> {
  try {
    return { reply: await call };
  } catch (err) {
    return { error: (err as Error).constructor.name, message: (err as Error).message };
  }
}

describe('the lean KV transport', () => {
  const etcd = useCluster();

  it('answers every KV call as grpc-js does: the same replies, and the same typed errors', async () => {
    const cluster = etcd();
    const lean = createClient({ hosts: cluster.endpoints });
    const grpc = createClient({ hosts: cluster.endpoints, kvTransport: 'grpc-js' });
    clients.push(lean, grpc);
    const admin = cluster.client();
    const mib = Buffer.alloc(1024 * 1024, 'x');
    for (let i = 0; i < 5; i++) await admin.put(`kvt/big/${i}`).value(mib);
    await admin.put('kvt/a').value('1');
    const { header } = (await raw(admin).range!({ key: Buffer.from('kvt/a') })) as { header: { revision: string } };
    await raw(admin).compact!({ revision: header.revision });
    const future = String(BigInt(header.revision) + 1000n);
    const key = (k: string) => Buffer.from(k);

    const calls: [string, (kv: RawKV) => Promise<unknown>][] = [
      ['range', (kv) => kv.range!({ key: key('kvt/a') })],
      ['range, keys only, a prefix', (kv) => kv.range!({ key: key('kvt/'), range_end: key('kvt0'), keys_only: true })],
      [
        'txn with a failed compare',
        (kv) =>
          kv.txn!({
            compare: [{ key: key('kvt/a'), target: 'VALUE', result: 'EQUAL', value: key('2') }],
            failure: [{ request_range: { key: key('kvt/a') } }],
          }),
      ],
      ['put on a lease that does not exist', (kv) => kv.put!({ key: key('kvt/b'), value: key('v'), lease: '12345' })],
      ['put without a key', (kv) => kv.put!({ key: Buffer.alloc(0), value: key('v') })],
      [
        'txn over the 128 operations etcd allows',
        (kv) =>
          kv.txn!({ success: Array.from({ length: 129 }, (_, i) => ({ request_range: { key: key(`kvt/${i}`) } })) }),
      ],
      ['range at a compacted revision', (kv) => kv.range!({ key: key('kvt/a'), revision: '1' })],
      ['range at a future revision', (kv) => kv.range!({ key: key('kvt/a'), revision: future })],
      ['range whose reply is over 4 MiB', (kv) => kv.range!({ key: key('kvt/big/'), range_end: key('kvt/big0') })],
    ];
    for (const [what, call] of calls) {
      const [viaLean, viaGrpc] = [await outcome(call(raw(lean))), await outcome(call(raw(grpc)))];
      expect(viaLean, what).toEqual(viaGrpc);
    }
    // No deadline at all (grpc-js reads an infinite one so) is no deadline here either.
    const unbounded = createClient({ hosts: cluster.endpoints, callTimeoutMs: Number.POSITIVE_INFINITY });
    clients.push(unbounded);
    expect(await outcome(raw(unbounded).range!({ key: key('kvt/a') }))).toEqual(await outcome(calls[0]![1](raw(grpc))));
    // The cases above do fail, and with etcd's or the size limit's own words.
    const failed = await Promise.all(calls.slice(3).map(([, call]) => outcome(call(raw(lean)))));
    expect(failed.map((f) => (f as { message?: string }).message)).toEqual([
      expect.stringContaining('requested lease not found'),
      expect.stringContaining('key is not provided'),
      expect.stringContaining('too many operations in txn request'),
      expect.stringContaining('required revision has been compacted'),
      expect.stringContaining('required revision is a future revision'),
      expect.stringContaining('Received message larger than max'),
    ]);
  });

  it("sends a call with call options of the user's own through grpc-js, which runs them", async () => {
    const cluster = etcd();
    const seen: string[] = [];
    type Interceptor = NonNullable<Exclude<IOptions['defaultCallOptions'], (...a: never[]) => unknown>>['interceptors'];
    type Intercept = NonNullable<Interceptor>[number];
    const count: Intercept = (options, nextCall) => {
      seen.push(options.method_definition.path);
      // grpc-js types the result as its InterceptingCall class but uses only the interface nextCall returns.
      return nextCall(options) as ReturnType<Intercept>;
    };
    const client = createClient({ hosts: cluster.endpoints, defaultCallOptions: { interceptors: [count] } });
    clients.push(client);
    await client.put('kvt/own').value('1');
    expect(await client.get('kvt/own').string()).toBe('1');
    // The lean transport cannot run an interceptor: had it taken these calls, the user's would have been skipped.
    expect(seen).toEqual(['/etcdserverpb.KV/Put', '/etcdserverpb.KV/Range']);
  });

  it('keeps its connection after a timeout, and ends it once a keepalive ping goes unanswered', async () => {
    const proxy = await FaultProxy.start(etcd().endpoints[0]!);
    try {
      // etcd3's own client with only the lean transport added: every connection to the proxy is the transport's.
      const passThrough = {
        execute: async <T>(fn: (context: { signal: AbortSignal }) => T) => fn({ signal: new AbortController().signal }),
        onSuccess: () => ({ dispose: () => undefined }),
        onFailure: () => ({ dispose: () => undefined }),
      };
      const options: IOptions = {
        hosts: proxy.endpoint,
        faultHandling: { global: passThrough as never, host: () => passThrough as never },
        defaultCallOptions: () => ({ deadline: Date.now() + 500 }),
      };
      const client = new Etcd3(options);
      clients.push(client);
      const { hosts } = (client as unknown as { pool: { hosts: object[] } }).pool;
      installLeanKV(hosts, { keepaliveMs: 2000, keepaliveTimeoutMs: 500 });
      await client.put('kvt/silent').value('1');
      expect(proxy.stats.accepted).toBe(1);

      proxy.blackhole();
      const started = performance.now();
      await expect(client.get('kvt/silent').string()).rejects.toThrow(/deadline/i);
      expect(performance.now() - started).toBeLessThan(1500);
      // etcd3 reset the member after that timeout; the next call still goes out on the same connection, so it
      // reaches etcd after the one that timed out, as on grpc-js's connection (a late write, then its cleanup).
      await expect(client.get('kvt/silent').string()).rejects.toThrow(/deadline/i);
      expect(proxy.stats.accepted).toBe(1);
      // Calls in flight send a ping every 2 s; unanswered within 0.5 s, it ends the connection.
      for (let i = 0; i < 20 && proxy.stats.accepted < 2; i++) {
        await client.get('kvt/silent').catch(() => undefined);
      }
      expect(proxy.stats.accepted).toBe(2);
      proxy.restore();
      expect(await client.get('kvt/silent').string()).toBe('1');
    } finally {
      await proxy.close();
    }
  });
});
