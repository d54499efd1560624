import { afterAll, describe, expect, it } from 'vitest';
import { Queue } from '../src/index.js';
import { FaultProxy } from '../src/testing/index.js';
import { stillPending, useCluster, waitForKey, within } from './helpers.js';

/*
 * The fault proxy is exported for users' own tests, so its promises are
 * tested here against real etcd: what a client behind it sees, and what
 * etcd (seen by a direct client) received.
 */

/**
 * Retries `fn` until it succeeds, bounded: etcd3's default circuit breaker
 * refuses calls for up to 5 s after the failures a fault causes.
 */
async function untilOk(fn: () => Promise<unknown>, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      await fn();
      return;
    } catch (e) {
      if (performance.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** `call`, settled either way (the caller only waits for it to end). */
const settled = (call: Promise<unknown>): Promise<void> =>
  call.then(
    () => undefined,
    () => undefined,
  );

describe('FaultProxy', () => {
  const etcd = useCluster();
  const proxies: FaultProxy[] = [];
  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.close()));
  });

  async function setup() {
    const proxy = await FaultProxy.start(etcd().endpoints[0]!);
    proxies.push(proxy);
    const direct = etcd().client();
    const proxied = etcd().client({ hosts: [proxy.endpoint] });
    // Open the proxied connection first, as a client in use would have it.
    await proxied.get('warm-up');
    return { proxy, direct, proxied };
  }

  it('forwards both ways in forward mode', async () => {
    const { proxy, direct, proxied } = await setup();
    await proxied.put('fp/fwd').value('v');
    expect(await direct.get('fp/fwd').string()).toBe('v');
    expect(await proxied.get('fp/fwd').string()).toBe('v');
    expect(proxy.mode).toBe('forward');
    expect(proxy.stats.open).toBeGreaterThan(0);
  });

  it('dropReplies: a put commits (seen directly), the proxied call hears nothing; restore resets it', async () => {
    const { proxy, direct, proxied } = await setup();
    proxy.dropReplies();
    const call = proxied.put('fp/drop').value('committed').exec();
    call.catch(() => undefined);
    expect(await waitForKey(direct, 'fp/drop', 10_000)).toBe('committed');
    expect(await stillPending(call, 500)).toBe(true);
    expect(proxy.stats.droppedBytes).toBeGreaterThan(0);
    const openBefore = proxy.stats.open;
    proxy.restore();
    expect(proxy.stats.open).toBeLessThan(openBefore);
    // The reset ends the silent connection: the call settles (etcd3 may re-send it and succeed).
    await within(15_000, settled(call), 'call after restore');
    await proxied.put('fp/drop-after').value('ok');
    expect(await direct.get('fp/drop-after').string()).toBe('ok');
  });

  it('dropNextReply: only the next request is caught; its write commits and its connection goes silent', async () => {
    const { proxy, direct, proxied } = await setup();
    const caught = proxy.dropNextReply();
    const call = proxied.put('fp/next').value('1').exec();
    call.catch(() => undefined);
    expect(await within(10_000, caught, 'request caught')).toBe(true);
    expect(await waitForKey(direct, 'fp/next', 10_000)).toBe('1');
    expect(await stillPending(call, 500)).toBe(true);
    // One-shot: a client on another connection is not affected. (grpc-js shares one
    // connection among clients with the same target and options unless told not to.)
    const other = etcd().client({ hosts: [proxy.endpoint], grpcOptions: { 'grpc.use_local_subchannel_pool': 1 } });
    await within(10_000, other.put('fp/next-other').value('2').exec(), 'put on a new connection');
    proxy.restore();
    await within(15_000, settled(call), 'call after restore');
    await within(10_000, proxied.put('fp/next-after').value('3').exec(), 'put after restore');
    expect(await direct.get('fp/next-after').string()).toBe('3');
  });

  it('dropNextReply resolves false when restored before any request', async () => {
    const { proxy } = await setup();
    const caught = proxy.dropNextReply();
    proxy.restore();
    expect(await caught).toBe(false);
  });

  it('blackhole: a call hangs until its deadline and nothing reaches etcd; restore thaws the connection', async () => {
    const { proxy, direct, proxied } = await setup();
    proxy.blackhole();
    const started = performance.now();
    const deadlineMs = 1500;
    const err = await within(
      15_000,
      proxied
        .put('fp/hole')
        .value('v')
        .options({ deadline: new Date(Date.now() + deadlineMs) })
        .exec()
        .then(
          () => undefined,
          (e: unknown) => e,
        ),
      'blackholed call',
    );
    const elapsed = performance.now() - started;
    // etcd3's default policy may wrap the deadline error (a re-send past the deadline trips its breaker).
    expect(err).toBeInstanceOf(Error);
    expect(elapsed).toBeGreaterThanOrEqual(deadlineMs - 50);
    // The request waited in buffers, never forwarded while blackholed.
    expect(await direct.get('fp/hole').string()).toBeNull();
    proxy.restore();
    await untilOk(() => proxied.put('fp/hole-after').value('ok').exec(), 20_000);
    expect(await direct.get('fp/hole-after').string()).toBe('ok');
  });

  it('cut: calls fail fast with a connection error; restore lets the client reconnect', async () => {
    const { proxy, direct, proxied } = await setup();
    proxy.cut();
    expect(proxy.stats.open).toBe(0);
    const started = performance.now();
    const err = await within(
      10_000,
      proxied
        .put('fp/cut')
        .value('v')
        .exec()
        .then(
          () => undefined,
          (e: unknown) => e,
        ),
      'cut call',
    );
    expect(err).toBeInstanceOf(Error);
    expect(performance.now() - started).toBeLessThan(3000);
    expect(await direct.get('fp/cut').string()).toBeNull();
    proxy.restore();
    await untilOk(() => proxied.put('fp/cut-after').value('ok').exec(), 20_000);
    expect(await direct.get('fp/cut-after').string()).toBe('ok');
  });

  it('the docs/testing.md example: an enqueue whose reply is lost is delivered once', async () => {
    const { proxy, direct: observer, proxied: app } = await setup();
    const committed = await observer.watch().prefix('fp-jobs/').create();
    const seen = new Promise((resolve) => committed.once('put', resolve));
    const caught = proxy.dropNextReply();
    const enqueued = new Queue(app, 'fp-jobs').enqueue('report-42');
    expect(await within(10_000, caught, 'request caught')).toBe(true);
    await within(10_000, seen, 'item committed');
    proxy.restore();
    await within(20_000, enqueued, 'enqueue after restore');
    expect(await observer.getAll().prefix('fp-jobs/').count()).toBe(1);
    await committed.cancel();
  });

  it('rejects a malformed target', async () => {
    await expect(FaultProxy.start('nohost')).rejects.toThrow(/host:port/);
  });
});
