import { describe, expect, it } from 'vitest';
import { ServiceDiscovery, ServiceRegistry, type ServiceChange, type SessionExpiredError } from '../src/index.js';
import { converged, freshInstances, until, viewOf } from './fixtures/discovery-helpers.js';
import { spawnWorker, useCluster, within } from './helpers.js';

describe('ServiceDiscovery when an instance process is killed', () => {
  const etcd = useCluster();

  it('a SIGKILLed instance disappears after its TTL, not before', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using disco = new ServiceDiscovery(client, 'crash');
    await disco.ready();
    const ttl = 2;
    const worker = spawnWorker('fixtures/service-instance.ts', [
      cluster.endpoints.join(','),
      'crash',
      'w1',
      '10.0.0.1:80',
      String(ttl),
    ]);
    const line = await worker.waitFor(/^registered /);
    const [, key, leaseId] = line.split(' ');
    expect(key).toBe('services/crash/w1');
    await until(disco, () => disco.get('w1')?.leaseId === leaseId, 'worker registered');
    expect(disco.get('w1')!.metadata).toEqual({ pid: worker.pid });

    const removed = new Promise<number>((resolve) => {
      disco.on('change', (c: ServiceChange) => {
        if (c.type === 'removed' && c.instance.id === 'w1') resolve(performance.now());
      });
    });
    worker.kill('SIGKILL');
    await worker.exited;
    const killedAt = performance.now();
    const goneAt = await within(15_000, removed, 'instance removed after its TTL');
    // The lease outlived the process by most of its TTL (its last keepalive was at most TTL/3 before the kill).
    expect(goneAt - killedAt).toBeGreaterThan((ttl * 1000 * 2) / 3 - 250);
    expect(disco.instances()).toEqual([]);
    expect(await freshInstances(client, 'services/crash/')).toEqual([]);
  });
});

describe('ServiceRegistry across an etcd outage longer than the TTL', () => {
  const etcd = useCluster();

  it('emits lost, re-registers under a new lease once etcd is back, and discovery converges', async () => {
    const cluster = etcd();
    const member = cluster.members[0]!;
    const client = cluster.client();
    await using disco = new ServiceDiscovery(cluster.client(), 'outage');
    await disco.ready();
    const reg = await ServiceRegistry.register(client, {
      service: 'outage',
      id: 'api-1',
      address: '10.0.0.9:80',
      ttl: 2,
    });
    const steady = await ServiceRegistry.register(cluster.client(), {
      service: 'outage',
      id: 'api-2',
      address: '10.0.0.8:80',
      ttl: 30,
    });
    await until(disco, () => disco.size === 2, 'both registered');
    const firstLease = reg.leaseId!;
    const events: string[] = [];
    const lost = new Promise<SessionExpiredError>((resolve) =>
      reg.once('lost', (err) => {
        events.push('lost');
        resolve(err);
      }),
    );
    const reregistered = new Promise<{ leaseId: string; revision: bigint }>((resolve) =>
      reg.once('re-registered', (info) => {
        events.push('re-registered');
        resolve(info);
      }),
    );

    await member.stop();
    const err = await within(15_000, lost, 'lost event');
    expect(err.code).toBe('SESSION_EXPIRED');
    expect(reg.registered).toBe(false);
    expect(reg.leaseId).toBeUndefined();
    // Stay down a while longer than the TTL (waiting for time is the point here).
    await new Promise((r) => setTimeout(r, 2500));
    await member.spawn();
    await cluster.waitHealthy();

    const info = await within(30_000, reregistered, 're-registered event');
    expect(events).toEqual(['lost', 're-registered']);
    expect(info.leaseId).not.toBe(firstLease);
    expect(reg.registered).toBe(true);
    expect(reg.leaseId).toBe(info.leaseId);
    await until(disco, () => disco.get('api-1')?.leaseId === info.leaseId, 'discovery sees the new lease');
    await converged(disco, client, 'after the outage');
    expect(viewOf(disco)).toEqual([
      ['api-1', '10.0.0.9:80', info.leaseId],
      ['api-2', '10.0.0.8:80', steady.leaseId!],
    ]);
    // The old lease does not come back to delete the new registration.
    expect(Number((await client.leaseClient.leaseTimeToLive({ ID: firstLease })).TTL)).toBeLessThanOrEqual(0);
    expect(steady.registered).toBe(true);
    await reg.deregister();
    await steady.deregister();
    await until(disco, () => disco.size === 0, 'both deregistered');
  });
});

describe('ServiceDiscovery in a 3-member cluster when the Raft leader is killed', () => {
  const etcd = useCluster({ members: 3 });

  it('keeps converging while instances come and go', async () => {
    const cluster = etcd();
    const admin = cluster.client();
    await using disco = new ServiceDiscovery(cluster.client(), 'ha');
    await disco.ready();
    const regs = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        ServiceRegistry.register(cluster.client(), { service: 'ha', id: `s${i}`, address: `10.2.0.${i}:80`, ttl: 10 }),
      ),
    );
    await until(disco, () => disco.size === 6, 'six instances');

    const leader = await cluster.leader();
    const killed = leader.kill();
    // Churn while the cluster elects a new leader: some leave, some arrive.
    const leaving = regs.splice(0, 2);
    const [arrived] = await Promise.all([
      within(
        30_000,
        Promise.all(
          Array.from({ length: 3 }, (_, i) =>
            ServiceRegistry.register(cluster.client(), {
              service: 'ha',
              id: `t${i}`,
              address: `10.3.0.${i}:80`,
              ttl: 10,
            }),
          ),
        ),
        'registrations during failover',
      ),
      within(30_000, Promise.all(leaving.map((r) => r.deregister())), 'deregistrations during failover'),
      killed,
    ]);
    await cluster.leader();
    // deregister() resolved: the leavers' keys are gone from etcd (their revoke was retried through the failover).
    expect((await freshInstances(admin, 'services/ha/')).map(([id]) => id)).toEqual([
      's2',
      's3',
      's4',
      's5',
      't0',
      't1',
      't2',
    ]);
    await converged(disco, admin, 'after the leader was killed');
    // Every remaining instance is registered (a lease lost to a slow failover is re-registered, not dropped).
    await within(
      30_000,
      Promise.all(
        [...regs, ...arrived].map((r) =>
          r.registered ? undefined : new Promise((resolve) => r.once('re-registered', resolve)),
        ),
      ),
      'all registered',
    );
    await converged(disco, admin, 'after re-registrations');
    // And it goes on converging afterwards.
    await Promise.all([...regs, ...arrived].map((r) => r.deregister()));
    await until(disco, () => disco.size === 0, 'all gone after failover');
    expect(await freshInstances(admin, 'services/ha/')).toEqual([]);
  });
});
