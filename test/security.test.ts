import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  closeClient,
  createClient,
  Election,
  Mutex,
  observeLeader,
  PermissionDeniedError,
  Queue,
  runSTM,
  Semaphore,
  ServiceDiscovery,
  ServiceRegistry,
  Session,
  WorkQueue,
  isRecipeError,
  type LeaderState,
} from '../src/index.js';
import {
  EtcdCluster,
  requestCounts,
  requestsBetween,
  type EtcdClusterOptions,
  type EtcdGrant,
} from '../src/testing/index.js';
import { keysUnder, stillPending, within } from './helpers.js';

/*
 * The recipes over TLS (server and client certificates) and under etcd's
 * auth, as a user whose role grants only the recipe's own keys: the minimal
 * roles docs/security.md lists. Each mode runs the same representative
 * operations; the auth mode also checks that a permission failure rejects at
 * once with PERMISSION_DENIED and is never retried.
 */

/** The minimal role of each recipe used below, as docs/security.md gives it. */
const roles: Record<string, (name: string) => EtcdGrant[]> = {
  mutex: (name) => [{ prefix: `${name}/` }],
  semaphore: (name) => [{ prefix: `${name}/` }],
  election: (name) => [{ prefix: `${name}/` }],
  queue: (prefix) => [{ prefix: `${prefix}/` }, { prefix: `__${prefix}/` }],
  workQueue: (prefix) => [{ prefix: `${prefix}/` }],
  stm: (prefix) => [{ prefix }],
  discovery: (service) => [{ prefix: `services/${service}/` }],
};

const modes: [string, EtcdClusterOptions][] = [
  ['TLS (server certificate)', { tls: true }],
  ['TLS with client-certificate auth', { tls: { clientCertAuth: true } }],
  ['auth, least-privilege users', { auth: true }],
];

/*
 * Each mode with etcd3's own client and with `createClient`'s, whose KV calls
 * take the lean transport (core/lean-kv.ts) and so carry TLS and the login
 * token themselves.
 */
const clientKinds = ['etcd3 clients', 'createClient clients'] as const;
const runs = modes.flatMap(([mode, options]) => clientKinds.map((kind) => [mode, kind, options] as const));

describe.each(runs)('recipes over %s, %s', (mode, kind, options) => {
  let cluster: EtcdCluster;
  let admin: Etcd3;
  let users = 0;
  const made: Etcd3[] = [];
  beforeAll(async () => {
    cluster = await EtcdCluster.start(options);
    admin = cluster.client();
  });
  afterAll(async () => {
    await Promise.all(made.splice(0).map((c) => closeClient(c)));
    await cluster?.stop();
  });

  function connect(extra: Parameters<EtcdCluster['clientOptions']>[0] = {}): Etcd3 {
    if (kind === 'etcd3 clients') return cluster.client(extra);
    const client = createClient({ ...cluster.clientOptions(extra), hosts: cluster.endpoints });
    made.push(client);
    return client;
  }

  /** A client allowed exactly the recipe's role (with auth), or a plain cluster client (TLS). */
  async function clientFor(recipe: keyof typeof roles, name: string): Promise<Etcd3> {
    if (!options.auth) return connect();
    const user = await cluster.createUser(`${recipe}-${++users}`, roles[recipe]!(name));
    return connect({ auth: user });
  }

  it('Mutex: exclusive, FIFO handoff with a growing fencing token', async () => {
    const name = 'sec/mutex';
    const [c1, c2] = [await clientFor('mutex', name), await clientFor('mutex', name)];
    const [s1, s2] = [await Session.create(c1, { ttl: 10 }), await Session.create(c2, { ttl: 10 })];
    const m1 = new Mutex(s1, name);
    const m2 = new Mutex(s2, name);
    await m1.lock();
    const first = m1.fencingToken;
    const waiting = m2.lock();
    expect(await stillPending(waiting, 300)).toBe(true);
    await m1.unlock();
    await within(10_000, waiting, 'handoff');
    expect(m2.fencingToken! > first!).toBe(true);
    await m2.unlock();
    await s1.close();
    await s2.close();
    expect(await keysUnder(admin, `${name}/`)).toEqual([]);
  });

  it('Semaphore: at most `permits` holders; a release admits the next', async () => {
    const name = 'sec/sem';
    const client = await clientFor('semaphore', name);
    const session = await Session.create(client, { ttl: 10 });
    const sem = new Semaphore(session, name, 2);
    const a = await sem.acquire();
    const b = await sem.acquire();
    const c = sem.acquire();
    expect(await stillPending(c, 300)).toBe(true);
    await a.release();
    const held = await within(10_000, c, 'third permit');
    await b.release();
    await held.release();
    await session.close();
    expect(await keysUnder(admin, `${name}/queue/`)).toEqual([]);
  });

  it('Election: campaign, observe, resign hands leadership over', async () => {
    const name = 'sec/elect';
    const [c1, c2] = [await clientFor('election', name), await clientFor('election', name)];
    const [s1, s2] = [await Session.create(c1, { ttl: 10 }), await Session.create(c2, { ttl: 10 })];
    const e1 = new Election(s1, name);
    const e2 = new Election(s2, name);
    const watcher = new AbortController();
    const states: (string | undefined)[] = [];
    const sawB = new Promise<void>((resolve) => {
      void (async () => {
        for await (const state of e1.observe({ signal: watcher.signal }) as AsyncIterable<LeaderState>) {
          states.push(state.leader?.value);
          if (state.leader?.value === 'b') resolve();
        }
      })();
    });
    await e1.campaign('a');
    const second = e2.campaign('b');
    expect(await stillPending(second, 300)).toBe(true);
    expect((await e2.leader())?.value).toBe('a');
    await e1.resign();
    await within(10_000, second, 'second campaign');
    await within(10_000, sawB, 'observer sees b');
    watcher.abort();
    expect(states).toContain('a');
    await e2.resign();
    await s1.close();
    await s2.close();
  });

  it('Queue: FIFO, and a waiting dequeue gets a later enqueue', async () => {
    const prefix = 'sec-q';
    const client = await clientFor('queue', prefix);
    const q = new Queue(client, prefix);
    for (const v of ['1', '2', '3']) await q.enqueue(v);
    expect([await q.dequeue(), await q.dequeue(), await q.dequeue()]).toEqual(['1', '2', '3']);
    const waiting = q.dequeue();
    expect(await stillPending(waiting, 300)).toBe(true);
    await q.enqueue('late');
    expect(await within(10_000, waiting, 'waiting dequeue')).toBe('late');
    await q.close();
    expect(await keysUnder(admin, `${prefix}/`)).toEqual([]);
  });

  it('WorkQueue: add, claim, ack', async () => {
    const prefix = 'sec/wq';
    const client = await clientFor('workQueue', prefix);
    const session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, prefix);
    await wq.add('job-1');
    const job = await within(10_000, wq.claim(), 'claim');
    expect(job.value).toBe('job-1');
    await job.ack();
    expect(await wq.stats()).toMatchObject({ jobs: 0, claimed: 0 });
    // Its spent receipt is deleted now, not by the idle flush 2 s later, inside a later test's Txn count.
    await wq.close();
    await session.close();
    expect(await keysUnder(admin, `${prefix}/jobs/`)).toEqual([]);
  });

  it('STM: a transfer that conflicts with an outside write is retried and keeps the total', async () => {
    const prefix = 'sec/stm/';
    const client = await clientFor('stm', prefix);
    await client.put(`${prefix}a`).value('100');
    await client.put(`${prefix}b`).value('0');
    let attempts = 0;
    await runSTM(client, async (tx) => {
      attempts++;
      const a = Number(await tx.get(`${prefix}a`));
      const b = Number(await tx.get(`${prefix}b`));
      // A concurrent writer moves money after our reads, once: our commit must conflict.
      if (attempts === 1) await admin.put(`${prefix}a`).value(String(a - 5));
      tx.put(`${prefix}a`, String(a - 10));
      tx.put(`${prefix}b`, String(b + 10));
    });
    expect(attempts).toBe(2);
    const a = Number(await admin.get(`${prefix}a`).string());
    const b = Number(await admin.get(`${prefix}b`).string());
    expect([a, b]).toEqual([85, 10]);
  });

  it('Discovery: a registered instance is discovered, and gone once deregistered', async () => {
    const service = 'sec-login';
    const client = await clientFor('discovery', service);
    const reg = await ServiceRegistry.register(client, { service, id: 'i1', address: '127.0.0.1:8080', ttl: 10 });
    const disco = new ServiceDiscovery(client, service);
    await within(10_000, disco.ready(), 'discovery ready');
    expect(disco.instances().map((i) => i.id)).toEqual(['i1']);
    const gone = new Promise<void>((resolve) =>
      disco.on('change', () => {
        if (disco.instances().length === 0) resolve();
      }),
    );
    await reg.deregister();
    await within(10_000, gone, 'deregistration seen');
    await disco.close();
  });

  it.runIf(!!options.auth)(
    'a lock outside the role rejects at once with PERMISSION_DENIED naming the key, and leaves no key',
    async () => {
      expect(mode).toMatch(/auth/);
      const client = await clientFor('mutex', 'sec/allowed');
      const session = await Session.create(client, { ttl: 10 });
      const before = await requestCounts(cluster.members[0]!.metricsUrl);
      const started = performance.now();
      const err = await within(
        10_000,
        new Mutex(session, 'sec/forbidden').lock().then(
          () => undefined,
          (e: unknown) => e,
        ),
        'denied lock',
      );
      const elapsed = performance.now() - started;
      const sent = requestsBetween(before, await requestCounts(cluster.members[0]!.metricsUrl));
      expect(isRecipeError(err, 'PERMISSION_DENIED')).toBe(true);
      expect(err).toBeInstanceOf(PermissionDeniedError);
      const denied = err as PermissionDeniedError;
      expect(denied.key).toMatch(/^sec\/forbidden\//);
      expect(denied.message).toContain('sec/forbidden/');
      // Not retried: the refused create, and at most the cleanup of the key it might have made.
      expect(sent.txn).toBeLessThanOrEqual(2);
      expect(elapsed).toBeLessThan(1000);
      await session.close();
      expect(await keysUnder(admin, 'sec/forbidden')).toEqual([]);
    },
  );

  it.runIf(!!options.auth)(
    'observing an election outside the role ends with PERMISSION_DENIED naming the key',
    async () => {
      const client = await clientFor('mutex', 'sec/allowed');
      const err = await within(
        10_000,
        (async () => {
          for await (const state of observeLeader(client, 'sec/forbidden-election', {
            signal: AbortSignal.timeout(8000),
          }))
            void state;
        })().then(
          () => undefined,
          (e: unknown) => e,
        ),
        'denied observe',
      );
      expect(isRecipeError(err, 'PERMISSION_DENIED'), String(err)).toBe(true);
      expect((err as PermissionDeniedError).key).toMatch(/^sec\/forbidden-election/);
    },
  );
});
