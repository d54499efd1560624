import { describe, expect, it } from 'vitest';
import { isRecipeError, runWithSession, WorkQueue, Session, type RunWithSessionOptions } from '../src/index.js';
import { forkFixture, keysUnder, useCluster, waitForKeyGone, within } from './helpers.js';

describe('runWithSession', () => {
  const etcd = useCluster();

  it("resolves with fn's value on a live session and closes it", async () => {
    const client = etcd().client();
    let seen: Session | undefined;
    const value = await runWithSession(
      client,
      async (session, signal) => {
        seen = session;
        expect(signal.aborted).toBe(false);
        await client.put('rws/value').value('x').exec();
        return 42;
      },
      { ttl: 5 },
    );
    expect(value).toBe(42);
    expect(seen!.expired).toBe(true);
    const leases = await client.leaseClient.leaseLeases();
    expect((leases.leases ?? []).map((l) => l.ID)).not.toContain(seen!.leaseId);
  });

  it("rejects with fn's own error (not a loss), and with the caller's reason on abort", async () => {
    const client = etcd().client();
    let runs = 0;
    await expect(
      runWithSession(
        client,
        () => {
          runs++;
          throw new Error('boom');
        },
        { ttl: 5 },
      ),
    ).rejects.toThrow('boom');
    expect(runs).toBe(1);
    const stop = new AbortController();
    let session: Session | undefined;
    const running = runWithSession(
      client,
      async (s, signal) => {
        session = s;
        await new Promise((_, reject) =>
          signal.addEventListener('abort', () => reject(new Error('fn saw abort')), { once: true }),
        );
      },
      { ttl: 5, signal: stop.signal },
    );
    await within(
      10_000,
      (async () => {
        while (!session) await new Promise((r) => setTimeout(r, 5));
      })(),
    );
    stop.abort(new Error('stop now'));
    await expect(running).rejects.toThrow('stop now');
    expect(session!.expired).toBe(true);
  });

  it('starts again on a fresh session after a loss, only once fn settled, and calls onLost', async () => {
    const client = etcd().client();
    const admin = etcd().client();
    const sessions: Session[] = [];
    const lost: unknown[] = [];
    let running = 0;
    let overlap = false;
    const value = await within(
      30_000,
      runWithSession(
        client,
        async (session, signal) => {
          running++;
          if (running > 1) overlap = true;
          sessions.push(session);
          try {
            if (sessions.length === 1) {
              // Revoke our lease from another client: the session notices and fn's signal aborts.
              await admin.leaseClient.leaseRevoke({ ID: session.leaseId });
              // The session may have noticed before the revoke's reply came back: the signal is then aborted already.
              if (!signal.aborted)
                await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
              // Settle late, on purpose: the next run must not start before this one is over.
              await new Promise((r) => setTimeout(r, 200));
              return 'first run returned after the loss (not an outcome)';
            }
            return `done on session ${sessions.length}`;
          } finally {
            running--;
          }
        },
        { ttl: 5, onLost: (reason) => lost.push(reason) },
      ),
    );
    expect(value).toBe('done on session 2');
    expect(overlap).toBe(false);
    expect(sessions).toHaveLength(2);
    expect(sessions[0]!.leaseId).not.toBe(sessions[1]!.leaseId);
    expect(lost).toHaveLength(1);
    expect(isRecipeError(lost[0], 'SESSION_EXPIRED')).toBe(true);
  });

  it('rejects bad arguments before creating a session', async () => {
    const client = etcd().client();
    const leasesBefore = (await client.leaseClient.leaseLeases()).leases?.length ?? 0;
    const fn = async () => 1;
    const bad: [unknown, unknown, unknown, string][] = [
      [{}, fn, {}, 'client'],
      [client, 'nope', {}, 'fn'],
      [client, fn, { ttl: 0 }, 'options.ttl'],
      [client, fn, { signal: 'x' }, 'options.signal'],
      [client, fn, { onLost: 5 }, 'options.onLost'],
    ];
    for (const [c, f, o, argument] of bad) {
      await expect(
        Promise.resolve().then(() => runWithSession(c as never, f as never, o as RunWithSessionOptions)),
      ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', argument });
    }
    expect((await client.leaseClient.leaseLeases()).leases?.length ?? 0).toBe(leasesBefore);
  });

  it('a worker SIGSTOPped past its TTL recovers by itself; its jobs are redelivered, no effect twice', async () => {
    const cluster = etcd();
    const client = cluster.client();
    const prefix = 'rws-jobs';
    await using producerSession = await Session.create(client, { ttl: 10 });
    const producer = new WorkQueue(producerSession, prefix);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await producer.add(`job-${i}`));
    const w = forkFixture('fixtures/session-worker.ts', [cluster.endpoints.join(','), prefix, '2']);
    try {
      const first = w.messages[await w.next((m) => m.type === 'session')]!;
      const claimedAt = await w.next((m) => m.type === 'claimed');
      const claimed = w.messages[claimedAt]!;
      // The worker holds the claim and waits for our "go" before its side effect: freeze it there.
      w.child.kill('SIGSTOP');
      // Proof that the session is gone on the server: etcd deleted the claim with the lease, and the lease is gone.
      await waitForKeyGone(client, `${prefix}/claims/${claimed.id as string}`, 30_000);
      const ttl = await client.leaseClient.leaseTimeToLive({ ID: first.lease as string });
      expect(Number(ttl.TTL)).toBeLessThanOrEqual(0);
      w.child.kill('SIGCONT');
      // Let the woken run try its side effect now: the fence must refuse it.
      w.child.send({ type: 'go', id: claimed.id });
      // From here on, every claim may proceed at once.
      let from = claimedAt + 1;
      await within(
        60_000,
        (async () => {
          for (let acked = 0; acked < ids.length; ) {
            const i = await w.next(
              (m) => m.type === 'claimed' || m.type === 'acked' || m.type === 'failed',
              from,
              60_000,
            );
            const m = w.messages[i]!;
            from = i + 1;
            if (m.type === 'failed') throw new Error(`worker failed: ${m.message as string}`);
            if (m.type === 'claimed') w.child.send({ type: 'go', id: m.id });
            else acked++;
          }
        })(),
        'all jobs acked',
      );
      w.child.send({ type: 'stop' });
      await w.next((m) => m.type === 'stopped');
    } finally {
      if (w.child.exitCode === null) w.child.kill('SIGKILL');
      await w.exited;
    }
    const msgs = w.messages;
    // Recovered by itself: one loss, a second session in the same process.
    expect(msgs.filter((m) => m.type === 'lost')).toHaveLength(1);
    const sessions = msgs.filter((m) => m.type === 'session');
    expect(sessions).toHaveLength(2);
    expect(sessions[0]!.lease).not.toBe(sessions[1]!.lease);
    // The frozen job was redelivered: claimed twice, attempts 1 then 2, the second time on the new session.
    const frozen = msgs.find((m) => m.type === 'claimed')!;
    const claimsOfFrozen = msgs.filter((m) => m.type === 'claimed' && m.id === frozen.id);
    expect(claimsOfFrozen.map((m) => m.attempts)).toEqual([1, 2]);
    expect(claimsOfFrozen[1]!.lease).toBe(sessions[1]!.lease);
    // The woken run sent its side effect after the loss, and the fence refused it.
    expect(msgs.filter((m) => m.type === 'effect' && m.token === frozen.token).map((m) => m.ok)).toEqual([false]);
    // Every job's side effect landed exactly once, under its last claim's fencing token.
    const effects = await keysUnder(client, `${prefix}-effects/`);
    const byJob = new Map<string, string[]>();
    for (const k of effects) {
      const [, id, token] = k.split('/');
      byJob.set(id!, [...(byJob.get(id!) ?? []), token!]);
    }
    expect([...byJob.keys()].sort()).toEqual([...ids].sort());
    for (const [, tokens] of byJob) expect(tokens).toHaveLength(1);
    expect(byJob.get(frozen.id as string)).toEqual([claimsOfFrozen[1]!.token]);
    expect(await producer.stats()).toMatchObject({ jobs: 0, claimed: 0 });
    await producer.close(); // deletes the receipts of its adds
    // No job, claim, attempt counter or waiter is left. (A receipt of a write the frozen process proved
    // before it was stopped may be: receipts are deleted by their writer's next write or on close.)
    expect((await keysUnder(client, `${prefix}/`)).filter((k) => !k.startsWith(`${prefix}/receipts/`))).toEqual([]);
  }, 120_000);
});
