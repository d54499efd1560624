import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import {
  isRecipeError,
  ServiceDiscovery,
  ServiceIdTakenError,
  ServiceRegistry,
  type DisplacedInfo,
  type ServiceChange,
  type ServiceInstance,
} from '../src/index.js';
import { converged, freshInstances, until, viewOf } from './fixtures/discovery-helpers.js';
import { requestCounts } from '../src/testing/index.js';
import { keysUnder, useCluster, within } from './helpers.js';

/** etcd's count of Range requests received so far (from /metrics). */
async function rangeRequests(metricsUrl: string): Promise<number> {
  return (await requestCounts(metricsUrl)).range;
}

async function leaseCount(client: Etcd3): Promise<number> {
  return (await client.leaseClient.leaseLeases({})).leases.length;
}

/** The next change event of `d` that satisfies `pred`. */
function nextChange(d: ServiceDiscovery, pred: (c: ServiceChange) => boolean, what: string): Promise<ServiceChange> {
  return within(
    20_000,
    new Promise<ServiceChange>((resolve) => {
      const on = (c: ServiceChange) => {
        if (!pred(c)) return;
        d.off('change', on);
        resolve(c);
      };
      d.on('change', on);
    }),
    what,
  );
}

describe('ServiceRegistry and ServiceDiscovery', () => {
  const etcd = useCluster();

  it('registers services/<service>/<id> as JSON on a kept-alive lease; deregister() removes it at once', async () => {
    const client = etcd().client();
    const before = Date.now();
    const reg = await ServiceRegistry.register(client, {
      service: 'layout',
      id: 'node-1',
      address: '10.0.0.7:8008',
      metadata: { zone: 'a', weight: 3 },
      ttl: 5,
    });
    expect(reg.key).toBe('services/layout/node-1');
    expect(reg.registered).toBe(true);
    const kvs = (await client.getAll().prefix('services/layout/').exec()).kvs;
    expect(kvs).toHaveLength(1);
    expect(kvs[0]!.key.toString()).toBe('services/layout/node-1');
    expect(kvs[0]!.lease).toBe(reg.leaseId);
    expect(BigInt(kvs[0]!.mod_revision)).toBe(reg.revision);
    const value = JSON.parse(kvs[0]!.value.toString()) as Record<string, unknown>;
    expect(Object.keys(value)).toEqual(['address', 'metadata', 'registeredAt']);
    expect(value.address).toBe('10.0.0.7:8008');
    expect(value.metadata).toEqual({ zone: 'a', weight: 3 });
    const at = Date.parse(value.registeredAt as string);
    expect(at).toBeGreaterThanOrEqual(before);
    expect(at).toBeLessThanOrEqual(Date.now());
    const ttl = await client.leaseClient.leaseTimeToLive({ ID: reg.leaseId! });
    expect(Number(ttl.grantedTTL)).toBe(5);

    // A custom root.
    const other = await ServiceRegistry.register(client, {
      service: 'layout',
      id: 'x',
      address: 'h:1',
      root: 'apps/prod/',
    });
    expect(await keysUnder(client, 'apps/prod/')).toEqual(['apps/prod/layout/x']);
    await other.deregister();

    const leaseId = reg.leaseId!;
    await reg.deregister();
    expect(reg.registered).toBe(false);
    expect(await keysUnder(client, 'services/layout/')).toEqual([]);
    expect(await keysUnder(client, 'apps/')).toEqual([]);
    expect(Number((await client.leaseClient.leaseTimeToLive({ ID: leaseId })).TTL)).toBeLessThanOrEqual(0);
    await reg.deregister(); // idempotent
  });

  it('a registration is visible to discovery from the watch event alone (no re-read)', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using disco = new ServiceDiscovery(cluster.client(), 'rtt');
    await disco.ready();
    expect(disco.instances()).toEqual([]);
    const rangesBefore = await rangeRequests(cluster.members[0]!.clientUrl);
    const regs: ServiceRegistry[] = [];
    for (let i = 0; i < 10; i++) {
      const seen = nextChange(disco, (c) => c.instance.id === `i${i}`, `instance i${i} seen`);
      const reg = await ServiceRegistry.register(client, {
        service: 'rtt',
        id: `i${i}`,
        address: `10.0.0.${i}:80`,
        ttl: 5,
      });
      regs.push(reg);
      const change = await seen;
      expect(change.type).toBe('added');
      expect(change.resync).toBe(false);
      // The event is the registration's own write.
      expect(change.revision).toBe(reg.revision);
      expect(change.instance).toMatchObject({
        service: 'rtt',
        id: `i${i}`,
        key: `services/rtt/i${i}`,
        address: `10.0.0.${i}:80`,
        leaseId: reg.leaseId,
      });
      expect(disco.get(`i${i}`)?.revision).toBe(reg.revision);
    }
    // Discovery never read etcd to see them: one watch event each.
    expect(await rangeRequests(cluster.members[0]!.clientUrl)).toBe(rangesBefore);
    expect(viewOf(disco)).toEqual(await freshInstances(client, 'services/rtt/'));

    const removed = nextChange(disco, (c) => c.type === 'removed', 'removal seen');
    await regs[3]!.deregister();
    expect((await removed).instance.id).toBe('i3');
    expect(disco.get('i3')).toBeUndefined();
    await Promise.all(regs.map((r) => r.deregister()));
  });

  it('pick() round-robins in ID order while instances come and go; random picks only live ones', async () => {
    const client = etcd().client();
    await using disco = new ServiceDiscovery(client, 'rr');
    await disco.ready();
    expect(disco.pick()).toBeUndefined();
    const regs = await Promise.all(
      ['a', 'b', 'c'].map((id) => ServiceRegistry.register(client, { service: 'rr', id, address: `${id}:1` })),
    );
    await until(disco, () => disco.size === 3, 'three instances');
    expect(Array.from({ length: 7 }, () => disco.pick()!.id)).toEqual(['a', 'b', 'c', 'a', 'b', 'c', 'a']);
    await regs[1]!.deregister();
    await until(disco, () => disco.size === 2, 'b removed');
    expect(Array.from({ length: 4 }, () => disco.pick()!.id)).toEqual(['c', 'a', 'c', 'a']);
    const d = await ServiceRegistry.register(client, { service: 'rr', id: 'b2', address: 'b2:1' });
    await until(disco, () => disco.size === 3, 'b2 added');
    // Last picked was 'a': the next in ID order is 'b2'.
    expect(Array.from({ length: 3 }, () => disco.pick()!.id)).toEqual(['b2', 'c', 'a']);
    const counts = new Map<string, number>();
    for (let i = 0; i < 600; i++) {
      const id = disco.pick({ strategy: 'random' })!.id;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    expect([...counts.keys()].sort()).toEqual(['a', 'b2', 'c']);
    for (const n of counts.values()) expect(n).toBeGreaterThan(100);
    await Promise.all([regs[0]!.deregister(), regs[2]!.deregister(), d.deregister()]);
    await until(disco, () => disco.size === 0, 'all removed');
    expect(disco.pick()).toBeUndefined();
  });

  it('the list iterator yields the current list, then the latest after changes, and ends on close', async () => {
    const client = etcd().client();
    const disco = new ServiceDiscovery(client, 'iter');
    const iter = disco.lists();
    const first = await within(10_000, iter.next(), 'first list');
    expect(first).toEqual({ value: [], done: false });
    const a = await ServiceRegistry.register(client, { service: 'iter', id: 'a', address: 'a:1' });
    expect((await within(10_000, iter.next(), 'list with a')).value!.map((i: ServiceInstance) => i.id)).toEqual(['a']);
    // A slow consumer: three changes happen before it asks again; it gets the latest list only.
    const b = await ServiceRegistry.register(client, { service: 'iter', id: 'b', address: 'b:1' });
    const c = await ServiceRegistry.register(client, { service: 'iter', id: 'c', address: 'c:1' });
    await a.deregister();
    await until(disco, () => disco.size === 2 && !disco.get('a'), 'b, c');
    expect((await iter.next()).value!.map((i: ServiceInstance) => i.id)).toEqual(['b', 'c']);
    const pending = iter.next();
    await disco.close();
    expect(await pending).toEqual({ value: undefined, done: true });
    // for-await over a closed discovery ends at once.
    for await (const list of disco) throw new Error(`unexpected list ${list.length}`);
    await Promise.all([b.deregister(), c.deregister()]);
  });

  it('waitForStale: a restart waits for its own stale registration to expire, never for a live one', async () => {
    const client = etcd().client();
    // A crashed process: its registration stays until its lease expires (keepalives stopped, no revoke).
    const crashed = await ServiceRegistry.register(client, { service: 'restart', id: 'w1', address: 'old:1', ttl: 2 });
    crashed.session!.orphan();
    const started = performance.now();
    const restarted = await within(
      15_000,
      ServiceRegistry.register(client, { service: 'restart', id: 'w1', address: 'new:1', ttl: 5, waitForStale: true }),
      'the restarted registration',
    );
    expect(performance.now() - started).toBeLessThan(5000);
    expect(JSON.parse((await client.get('services/restart/w1').string())!).address).toBe('new:1');
    // A live instance keeps its lease alive: waiting for it ends with SERVICE_ID_TAKEN, and it keeps its key.
    const err = await ServiceRegistry.register(client, {
      service: 'restart',
      id: 'w1',
      address: 'dup:1',
      ttl: 5,
      waitForStale: true,
    }).catch((e: unknown) => e);
    expect(isRecipeError(err, 'SERVICE_ID_TAKEN')).toBe(true);
    expect(restarted.registered).toBe(true);
    expect(JSON.parse((await client.get('services/restart/w1').string())!).address).toBe('new:1');
    await restarted.deregister();
    await crashed.deregister();
  }, 30_000);

  it('registering an ID a live instance holds fails clearly and leaves nothing; replace takes it over', async () => {
    const client = etcd().client();
    await using disco = new ServiceDiscovery(client, 'dup');
    await disco.ready();
    const first = await ServiceRegistry.register(client, { service: 'dup', id: 'one', address: 'first:1', ttl: 5 });
    const leasesBefore = await leaseCount(client);
    const err = await ServiceRegistry.register(client, {
      service: 'dup',
      id: 'one',
      address: 'second:1',
      ttl: 5,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ServiceIdTakenError);
    expect(isRecipeError(err, 'SERVICE_ID_TAKEN')).toBe(true);
    expect((err as ServiceIdTakenError).code).toBe('SERVICE_ID_TAKEN');
    expect((err as ServiceIdTakenError).holderLeaseId).toBe(first.leaseId);
    expect((err as Error).message).toMatch(/services\/dup\/one is already registered.*replace: true/);
    expect(await leaseCount(client)).toBe(leasesBefore); // its lease was revoked
    expect(JSON.parse((await client.get('services/dup/one').string())!).address).toBe('first:1');
    expect(first.registered).toBe(true);

    const displaced = new Promise<DisplacedInfo>((resolve) => first.once('displaced', resolve));
    const updated = nextChange(
      disco,
      (c) => c.type === 'updated' && c.instance.address === 'second:1',
      'takeover seen',
    );
    const second = await ServiceRegistry.register(client, {
      service: 'dup',
      id: 'one',
      address: 'second:1',
      ttl: 5,
      replace: true,
    });
    expect(await within(10_000, displaced, 'displaced event')).toEqual({ reason: 'replaced', leaseId: second.leaseId });
    expect(first.registered).toBe(false);
    expect((await updated).previous?.address).toBe('first:1');
    expect(disco.instances().map((i) => [i.address, i.leaseId])).toEqual([['second:1', second.leaseId]]);
    // The displaced instance does not fight back, and deregistering it does not touch the new owner's key.
    await first.deregister();
    expect(await freshInstances(client, 'services/dup/')).toEqual([['one', 'second:1', second.leaseId]]);
    await expect(first.update({ address: 'x:1' })).rejects.toThrow(/no longer registered/);
    await second.deregister();
    expect(await keysUnder(client, 'services/dup/')).toEqual([]);
  });

  it('update() rewrites address and metadata under the same lease; an outside delete displaces', async () => {
    const client = etcd().client();
    await using disco = new ServiceDiscovery<{ v: number }>(client, 'upd');
    await disco.ready();
    const reg = await ServiceRegistry.register(client, {
      service: 'upd',
      id: 'u',
      address: 'old:1',
      metadata: { v: 1 },
    });
    await until(disco, () => disco.size === 1, 'registered');
    const changed = nextChange(disco, (c) => c.type === 'updated', 'update seen');
    await reg.update({ address: 'new:2', metadata: { v: 2 } });
    const c = await changed;
    expect(c.instance).toMatchObject({ address: 'new:2', metadata: { v: 2 }, leaseId: reg.leaseId });
    expect(c.previous).toMatchObject({ address: 'old:1', metadata: { v: 1 } });
    expect(reg.registered).toBe(true);

    const leaseId = reg.leaseId!;
    const displaced = new Promise<DisplacedInfo>((resolve) => reg.once('displaced', resolve));
    await client.delete().key('services/upd/u');
    expect(await within(10_000, displaced, 'displaced')).toEqual({ reason: 'deleted', leaseId: undefined });
    expect(reg.registered).toBe(false);
    // It revoked its now useless lease and did not re-register.
    await within(
      5000,
      (async () => {
        while (Number((await client.leaseClient.leaseTimeToLive({ ID: leaseId })).TTL) > 0)
          await new Promise((r) => setTimeout(r, 20));
      })(),
      'lease revoked',
    );
    expect(await keysUnder(client, 'services/upd/')).toEqual([]);
    await reg.deregister();
  });

  it("interoperates with etcd's Go naming/endpoints layout", async () => {
    const client = etcd().client();
    await using disco = new ServiceDiscovery(client, 'grpc');
    await disco.ready();
    // What Go's endpoints.Manager.AddEndpoint writes for target "services/grpc".
    await client.put('services/grpc/10.1.1.1:50051').value('{"Op":0,"Addr":"10.1.1.1:50051","Metadata":{"weight":2}}');
    await client.put('services/grpc/not-json').value('garbage');
    await client.put('services/grpc/no-address').value('{"metadata":{}}');
    const reg = await ServiceRegistry.register(client, {
      service: 'grpc',
      id: 'node',
      address: '10.1.1.2:50051',
      metadata: { weight: 1 },
      etcdEndpoints: true,
    });
    await until(disco, () => disco.size === 2, 'both instances');
    expect(disco.instances().map((i) => [i.id, i.address, i.metadata])).toEqual([
      ['10.1.1.1:50051', '10.1.1.1:50051', { weight: 2 }],
      ['node', '10.1.1.2:50051', { weight: 1 }],
    ]);
    // What Go's endpoints manager reads back (its JSON decoding matches field names case-insensitively,
    // so the lower-case duplicate "metadata" carries the same value).
    const raw = JSON.parse((await client.get('services/grpc/node').string())!) as Record<string, unknown>;
    expect(raw).toMatchObject({ Op: 0, Addr: '10.1.1.2:50051', Metadata: { weight: 1 }, address: '10.1.1.2:50051' });
    await reg.deregister();
    await client.delete().prefix('services/grpc/');
  });

  it('500 instances registering at once: discovery equals a fresh read, also after they all leave', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    const clients = Array.from({ length: 10 }, () => cluster.client());
    await using disco = new ServiceDiscovery(cluster.client(), 'many');
    await disco.ready();
    const regs = await within(
      60_000,
      Promise.all(
        Array.from({ length: 500 }, (_, i) =>
          ServiceRegistry.register(clients[i % clients.length]!, {
            service: 'many',
            id: `n${String(i).padStart(3, '0')}`,
            address: `10.9.${i >> 8}.${i & 255}:80`,
            ttl: 10,
          }),
        ),
      ),
      '500 registrations',
    );
    await until(disco, () => disco.size === 500, '500 instances seen');
    expect(viewOf(disco)).toEqual(await freshInstances(admin, 'services/many/'));
    expect(disco.cache.entries()).toEqual(
      (await admin.getAll().prefix('services/many/').exec()).kvs.map((kv) => [kv.key.toString(), kv.value.toString()]),
    );
    await within(60_000, Promise.all(regs.map((r) => r.deregister())), '500 deregistrations');
    await until(disco, () => disco.size === 0, 'all gone');
    expect(await freshInstances(admin, 'services/many/')).toEqual([]);
    await converged(disco, admin, 'after deregistration');
  });

  it('rejects bad input before writing anything', async () => {
    const client = etcd().client();
    const leasesBefore = await leaseCount(client);
    const base = { service: 'bad', id: 'i', address: 'a:1' };
    const cases: [unknown, string][] = [
      [undefined, 'options'],
      [{ ...base, service: '' }, 'options.service'],
      [{ ...base, service: 'a/b' }, 'options.service'],
      [{ ...base, service: 7 }, 'options.service'],
      [{ ...base, id: '' }, 'options.id'],
      [{ ...base, id: undefined }, 'options.id'],
      [{ ...base, address: 42 }, 'options.address'],
      [{ ...base, address: '' }, 'options.address'],
      [{ ...base, address: undefined }, 'options.address'],
      [{ ...base, ttl: 0 }, 'options.ttl'],
      [{ ...base, ttl: 1.5 }, 'options.ttl'],
      [{ ...base, ttl: '10' }, 'options.ttl'],
      [{ ...base, metadata: 'x' }, 'options.metadata'],
      [{ ...base, metadata: [1] }, 'options.metadata'],
      [{ ...base, metadata: { n: 1n } }, 'options.metadata'],
      [{ ...base, root: 'services' }, 'options.root'],
      [{ ...base, replace: 'yes' }, 'options.replace'],
      [{ ...base, signal: {} }, 'options.signal'],
    ];
    for (const [options, argument] of cases) {
      const err = await ServiceRegistry.register(client, options as never).catch((e: unknown) => e);
      expect(
        isRecipeError(err, 'INVALID_ARGUMENT'),
        `${JSON.stringify(options, (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))}`,
      ).toBe(true);
      expect((err as { argument: string }).argument).toBe(argument);
    }
    expect(await ServiceRegistry.register({} as never, base).catch((e: { argument?: string }) => e.argument)).toBe(
      'client',
    );
    expect(() => new ServiceDiscovery(client, '')).toThrow(/"service"/);
    expect(() => new ServiceDiscovery(client, 'a/b')).toThrow(/"service"/);
    expect(() => new ServiceDiscovery(client, 'ok', { strategy: 'fastest' as never })).toThrow(/"options.strategy"/);
    expect(() => new ServiceDiscovery(client, 'ok', { root: 'x' })).toThrow(/"options.root"/);
    // An already-aborted signal rejects with its reason before anything is written.
    const reason = new Error('stop');
    await expect(ServiceRegistry.register(client, { ...base, signal: AbortSignal.abort(reason) })).rejects.toBe(reason);
    expect(await keysUnder(client, 'services/bad/')).toEqual([]);
    expect(await leaseCount(client)).toBe(leasesBefore);
  });

  it('an aborted registration leaves no key and no lease behind', async () => {
    const client = etcd().client();
    const leasesBefore = await leaseCount(client);
    for (let i = 0; i < 5; i++) {
      const controller = new AbortController();
      const reason = new Error(`abort ${i}`);
      const pending = ServiceRegistry.register(client, {
        service: 'abort',
        id: `a${i}`,
        address: 'a:1',
        signal: controller.signal,
      });
      // Abort at different points: before the grant lands, between grant and Txn, during the Txn.
      await new Promise((r) => setTimeout(r, i));
      controller.abort(reason);
      const result = await pending.then(
        (reg) => reg,
        (e: unknown) => e,
      );
      if (result instanceof ServiceRegistry)
        await result.deregister(); // finished before the abort
      else expect(result).toBe(reason);
    }
    // Revokes may still be landing: wait for them (bounded).
    await within(
      5000,
      (async () => {
        while ((await keysUnder(client, 'services/abort/')).length > 0 || (await leaseCount(client)) > leasesBefore) {
          await new Promise((r) => setTimeout(r, 20));
        }
      })(),
      'no keys or leases left',
    );
  });
});
