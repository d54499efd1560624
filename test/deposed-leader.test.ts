import { afterAll, describe, expect, it } from 'vitest';
import { closeClient, createClient, Election, Session, WorkQueue } from '../src/index.js';
import { forkFixture, useCluster } from './helpers.js';

/*
 * issue: a deposed leader woken from a SIGSTOP past its TTL still enqueued a job (6 of 7 runs).
 * With the guard on WorkQueue.add, it never does: 0 of 20 rounds, in a real process.
 */
describe('a leader-only producer', () => {
  const etcd = useCluster();
  const clients: ReturnType<typeof createClient>[] = [];
  afterAll(async () => {
    await Promise.all(clients.map((c) => closeClient(c)));
  });

  it('woken from a SIGSTOP past its TTL never enqueues (20 rounds)', async () => {
    const rounds = 20;
    const endpoints = etcd().endpoints.join(',');
    const client = createClient({ hosts: etcd().endpoints });
    clients.push(client);
    const fixture = forkFixture('fixtures/deposed-leader.ts', [
      endpoints,
      'deposed/elect',
      'deposed/jobs',
      String(rounds),
    ]);
    const outcomes: string[] = [];
    let from = 0;
    try {
      for (let round = 0; round < rounds; round++) {
        from = await fixture.next((m) => m.type === 'leading' && m.round === round, from);
        fixture.child.kill('SIGSTOP');
        // Another candidate wins once the frozen leader's lease expired on the server.
        const session = await Session.create(client, { ttl: 10 });
        try {
          await new Election(session, 'deposed/elect').campaign('successor', { signal: AbortSignal.timeout(20_000) });
        } finally {
          fixture.child.kill('SIGCONT');
        }
        fixture.child.send({ type: 'go' });
        const at = await fixture.next((m) => m.type === 'outcome' && m.round === round, from);
        const m = fixture.messages[at]!;
        outcomes.push(String(m.outcome));
        expect(m.isLeader).toBe(false);
        from = at + 1;
        await session.close();
      }
    } finally {
      fixture.child.kill('SIGCONT');
    }
    expect(outcomes).toEqual(Array.from({ length: rounds }, () => 'NOT_LEADER'));
    expect(await new WorkQueue(client, 'deposed/jobs').stats()).toMatchObject({ jobs: 0 });
    expect(await fixture.exited).toBe(0);
  }, 180_000);
});
