import { afterAll, describe, expect, it } from 'vitest';
import { closeClient, createClient, Election, Mutex, Session } from '../src/index.js';
import { useCluster } from './helpers.js';

/** Blocks this process's event loop, as a SIGSTOP or a long GC pause would: no timer can fire meanwhile. */
function freezeFor(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    /* frozen */
  }
}

describe('a process woken from a pause past its TTL', () => {
  const etcd = useCluster();
  const clients: ReturnType<typeof createClient>[] = [];
  afterAll(async () => {
    await Promise.all(clients.map((c) => closeClient(c)));
  });

  it('sees held and isLeader false at once, before any timer fires', async () => {
    const client = createClient({ hosts: etcd().endpoints });
    clients.push(client);
    // TTL 3 s, not 1: on a loaded machine a 1 s lease can run out before the freeze even starts.
    const session = await Session.create(client, { ttl: 3 });
    const held = await new Mutex(session, 'live/lock').acquire();
    const election = new Election(session, 'live/elect');
    await election.campaign('me');
    expect(held.held).toBe(true);
    expect(election.isLeader).toBe(true);
    expect(session.live).toBe(true);
    freezeFor(3300);
    // No timer has run since the freeze: the session's own deadline is what tells.
    expect(session.expired).toBe(false);
    expect(session.live).toBe(false);
    expect(held.held).toBe(false);
    expect(election.isLeader).toBe(false);
    await session.close();
  });
});
