import { describe, expect, it } from 'vitest';
import { Barrier, createClient, DoubleBarrier, Session } from '../src/index.js';
import { keysUnder, stillPending, useCluster, waitForKeyCount, within, useProxies } from './helpers.js';

/*
 * Barriers after a lost reply, with etcd3's own hidden re-sends (a plain `new Etcd3()`): the write's
 * proof (our lease on the key, or a receipt) decides, never an attempt counter. 0.1.0 made a phantom
 * DoubleBarrier participant here, let 2 of 3 through early, then hung in leave().
 */
describe('barriers after a lost reply', () => {
  const etcd = useCluster();
  const net = useProxies(etcd);

  it('DoubleBarrier: an enter() reply lost and re-sent makes no phantom, none passes early, leave ends', async () => {
    const direct = etcd().client();
    const { proxy, client } = await net.plainViaProxy();
    await using mine = await Session.create(client, { ttl: 10 });
    await using other = await Session.create(direct, { ttl: 10 });
    const a = new DoubleBarrier(mine, 'dbl/round', 2);
    const caught = proxy.dropNextReply();
    const entering = a.enter();
    expect(await within(10_000, caught, 'the enter Txn')).toBe(true);
    await waitForKeyCount(direct, 'dbl/round/waiters/', 1);
    proxy.restore(); // the connection resets; etcd3 re-sends the Txn, which finds our key
    // Alone, with count 2, nobody may pass; and the re-send made no second participant.
    expect(await stillPending(entering, 500)).toBe(true);
    expect(await keysUnder(direct, 'dbl/round/waiters/')).toHaveLength(1);
    const b = new DoubleBarrier(other, 'dbl/round', 2);
    await within(10_000, Promise.all([entering, b.enter()]), 'both to enter');
    await within(10_000, Promise.all([a.leave(), b.leave()]), 'both to leave');
    expect(await keysUnder(direct, 'dbl/')).toEqual([]);
  });

  it('DoubleBarrier with count 1: a lost enter() reply still enters, and leaves no key', async () => {
    const direct = etcd().client();
    const { proxy, client } = await net.plainViaProxy();
    await using mine = await Session.create(client, { ttl: 10 });
    const a = new DoubleBarrier(mine, 'dbl/solo', 1);
    const caught = proxy.dropNextReply();
    const entering = a.enter();
    expect(await within(10_000, caught, 'the enter Txn')).toBe(true);
    await waitForKeyCount(direct, 'dbl/solo/waiters/', 1);
    proxy.restore();
    await within(10_000, entering, 'enter');
    expect(a.entered).toBe(true);
    await within(10_000, a.leave(), 'leave');
    expect(await keysUnder(direct, 'dbl/solo')).toEqual([]);
  });

  it('Barrier: hold() and release() whose replies are lost report what they did', async () => {
    const direct = etcd().client();
    const proxy = await net.proxy();
    const client = net.closeAfter(
      createClient({
        hosts: proxy.endpoint,
        callTimeoutMs: 500,
        grpcOptions: { 'grpc.use_local_subchannel_pool': 1 },
      }),
    );
    const b = new Barrier(client, 'bar/gate');
    expect(await b.isHeld()).toBe(false); // the connection is up
    let caught = proxy.dropNextReply();
    const holding = b.hold();
    expect(await within(10_000, caught, 'the hold Txn')).toBe(true);
    await waitForKeyCount(direct, 'bar/gate', 1);
    proxy.restore();
    expect(await within(10_000, holding, 'hold')).toBe(true); // it did create the key
    caught = proxy.dropNextReply();
    const releasing = b.release();
    expect(await within(10_000, caught, 'the release Txn')).toBe(true);
    proxy.restore();
    expect(await within(10_000, releasing, 'release')).toBe(true); // it did delete the key
    expect(await b.isHeld()).toBe(false);
    expect((await keysUnder(direct, 'bar/')).filter((k) => k !== 'bar/gate')).toEqual([]);
  });
});
