import { describe, expect, it } from 'vitest';
import { isRecipeError, Session, type SessionExpiredError } from '../src/index.js';
import { useCluster, within } from './helpers.js';

describe('Session', () => {
  const etcd = useCluster();

  it('grants a lease, keeps it alive past its TTL, and revokes it on close', async () => {
    const client = etcd().client();
    const session = await Session.create(client, { ttl: 2 });
    expect(session.leaseId).toMatch(/^[1-9][0-9]*$/);
    expect(session.leaseHex).toBe(BigInt(session.leaseId).toString(16));
    // Attach a key to the lease with a raw put, then outlive the TTL several times.
    await client.kv.put({ key: Buffer.from('s/k'), value: Buffer.from('v'), lease: session.leaseId });
    // Outlive the TTL several times: the session must not be lost meanwhile.
    const keptAlive = await Promise.race([
      new Promise<boolean>((resolve) => session.on('lost', () => resolve(false))),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 5000)),
    ]);
    expect(keptAlive).toBe(true);
    expect(await client.get('s/k').string()).toBe('v');
    const ttl = await client.leaseClient.leaseTimeToLive({ ID: session.leaseId });
    expect(Number(ttl.TTL)).toBeGreaterThan(0);

    await session.close();
    expect(session.signal.aborted).toBe(true);
    expect(isRecipeError(session.signal.reason, 'SESSION_EXPIRED')).toBe(true);
    expect(await client.get('s/k').string()).toBeNull();
    await session.close(); // idempotent
  });

  it('aborts its signal and emits lost when the lease is revoked from outside', async () => {
    const client = etcd().client();
    const session = await Session.create(client, { ttl: 5 });
    const lost = new Promise<SessionExpiredError>((resolve) => session.on('lost', resolve));
    await client.leaseClient.leaseRevoke({ ID: session.leaseId });
    const err = await within(5000, lost, 'lost event');
    expect(err.code).toBe('SESSION_EXPIRED');
    expect(session.signal.aborted).toBe(true);
    expect(session.signal.reason).toBe(err);
  });

  it('supports await using', async () => {
    const client = etcd().client();
    let id: string;
    {
      await using session = await Session.create(client, { ttl: 5 });
      id = session.leaseId;
    }
    const ttl = await client.leaseClient.leaseTimeToLive({ ID: id });
    expect(Number(ttl.TTL)).toBeLessThanOrEqual(0);
  });

  it('adopts an existing lease with leaseId', async () => {
    const client = etcd().client();
    const first = await Session.create(client, { ttl: 5 });
    first.orphan();
    const second = await Session.create(client, { leaseId: first.leaseId });
    expect(second.leaseId).toBe(first.leaseId);
    expect(second.ttl).toBe(5);
    await second.close();
    const ttl = await client.leaseClient.leaseTimeToLive({ ID: first.leaseId });
    expect(Number(ttl.TTL)).toBeLessThanOrEqual(0);
    await expect(Session.create(client, { leaseId: first.leaseId })).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
  });

  it('rejects bad input before granting anything', async () => {
    const client = etcd().client();
    const before = (await client.leaseClient.leaseLeases()).leases.length;
    for (const ttl of [0, -1, 1.5, '5', NaN, null]) {
      await expect(Session.create(client, { ttl: ttl as never })).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
        argument: 'options.ttl',
      });
    }
    await expect(Session.create({} as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'client' });
    await expect(Session.create(client, { signal: 'no' as never })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(Session.create(client, { leaseId: '0x12' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(Session.create(client, 5 as never)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      argument: 'options',
    });
    expect((await client.leaseClient.leaseLeases()).leases.length).toBe(before);
  });
});

describe('Session expiry while etcd is paused', () => {
  const etcd = useCluster();

  it('aborts the signal no later than last acknowledged keepalive + TTL', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const session = await Session.create(client, { ttl: 2 });
    // Let a keepalive round trip complete, then freeze the server.
    const firstAck = session.lastKeepAliveSentAt;
    await within(
      5000,
      new Promise<void>((resolve) => {
        const tick = setInterval(() => {
          if (session.lastKeepAliveSentAt > firstAck) {
            clearInterval(tick);
            resolve();
          }
        }, 20);
      }),
      'a keepalive acknowledgement',
    );
    cluster.members[0]!.pause();
    try {
      const { reason, abortedAfter } = await within(
        10_000,
        new Promise<{ reason: unknown; abortedAfter: number }>((resolve) => {
          // Measured from the last keepalive etcd acknowledged (one may still have been answered just
          // before the pause).
          session.signal.addEventListener(
            'abort',
            () =>
              resolve({
                reason: session.signal.reason,
                abortedAfter: performance.now() - session.lastKeepAliveSentAt,
              }),
            { once: true },
          );
        }),
        'session abort',
      );
      expect(isRecipeError(reason, 'SESSION_EXPIRED')).toBe(true);
      // Told before the server can have expired the lease ...
      expect(abortedAfter).toBeLessThanOrEqual(session.ttl * 1000);
      // ... but not absurdly early (the default margin is 10 % of the TTL, at least 100 ms).
      expect(abortedAfter).toBeGreaterThanOrEqual(session.ttl * 1000 - 250 - 50);
    } finally {
      cluster.members[0]!.resume();
    }
    await session.close();
  });
});
