import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { keysUnder, spawnWorker, useCluster, waitForKeyCount, waitForKeyGone, within, type Worker } from './helpers.js';

/** Nothing under `prefix` for `ms`: the event we must not see did not happen. */
async function noneUnderFor(client: Etcd3, prefix: string, ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
  expect(await keysUnder(client, prefix)).toEqual([]);
}

describe('DoubleBarrier with participants in separate processes', () => {
  const etcd = useCluster();

  function start(name: string, count: number, ttl: number, rounds: number): Worker[] {
    const cluster = etcd();
    return Array.from({ length: count }, (_, id) =>
      spawnWorker('fixtures/double-barrier-participant.ts', [
        cluster.endpoints.join(','),
        name,
        String(count),
        String(id),
        `ctl/${name}`,
        String(ttl),
        String(rounds),
      ]),
    );
  }

  it('count participants enter together and leave together, round after round', async () => {
    const client = etcd().client();
    const name = 'procs/db';
    const count = 3;
    const rounds = 2;
    const workers = start(name, count, 10, rounds);
    try {
      await Promise.all(workers.map((w) => w.waitFor(/^ready /)));
      for (let r = 0; r < rounds; r++) {
        const ctl = `ctl/${name}/${r}`;
        // Two arrive and wait; nobody is in until the third arrives.
        for (let id = 0; id < count - 1; id++) {
          await client.put(`${ctl}/enter/${id}`).value('go');
          await waitForKeyCount(client, `${name}/waiters/`, id + 1);
        }
        await noneUnderFor(client, `${ctl}/in/`, 300);
        await client.put(`${ctl}/enter/${count - 1}`).value('go');
        const entered = await Promise.all(workers.map((w) => w.waitFor(new RegExp(`^entered ${r} `))));
        // Each saw every participant arrived when it got through.
        expect(entered).toEqual(workers.map(() => `entered ${r} ${count}`));
        // Two leave and wait; nobody is out until the third leaves.
        for (let id = 0; id < count - 1; id++) await client.put(`${ctl}/leave/${id}`).value('go');
        await waitForKeyCount(client, `${ctl}/leaving/`, count - 1);
        await new Promise((res) => setTimeout(res, 300));
        expect(workers.flatMap((w) => w.lines).filter((l) => l.startsWith(`left ${r} `))).toEqual([]);
        await client.put(`${ctl}/leave/${count - 1}`).value('go');
        const left = await Promise.all(workers.map((w) => w.waitFor(new RegExp(`^left ${r} `))));
        expect(left).toEqual(workers.map(() => `left ${r} ${count}`));
        expect(await keysUnder(client, `${name}/`)).toEqual([]);
      }
      expect(await Promise.all(workers.map((w) => within(10_000, w.exited)))).toEqual(workers.map(() => 0));
    } finally {
      for (const w of workers) w.kill('SIGKILL');
    }
  });

  it('a participant killed with SIGKILL inside the round counts as left once its lease expires', async () => {
    const client = etcd().client();
    const name = 'kill/db';
    const count = 3;
    const workers = start(name, count, 3, 1);
    try {
      await Promise.all(workers.map((w) => w.waitFor(/^ready /)));
      const ctl = `ctl/${name}/0`;
      for (let id = 0; id < count; id++) await client.put(`${ctl}/enter/${id}`).value('go');
      await Promise.all(workers.map((w) => w.waitFor(/^entered 0 /)));
      // Kill the member with the oldest key: the one every other leaver waits on.
      const oldestKey = (await client.getAll().prefix(`${name}/waiters/`).sort('Create', 'Ascend').keys())[0]!;
      const owners = await client.getAll().prefix(`${ctl}/in/`).strings();
      const victim = Number(
        Object.entries(owners)
          .find(([, v]) => v === oldestKey)![0]
          .split('/')
          .pop(),
      );
      workers[victim]!.kill('SIGKILL');
      await workers[victim]!.exited;
      const survivors = workers.filter((_, id) => id !== victim);
      for (let id = 0; id < count; id++) if (id !== victim) await client.put(`${ctl}/leave/${id}`).value('go');
      const left = await Promise.all(survivors.map((w) => w.waitFor(/^left 0 /, 20_000)));
      expect(left).toEqual(survivors.map(() => `left 0 ${count - 1}`));
      await waitForKeyGone(client, oldestKey, 1000);
      // The dead member's key went with its lease, and the round's ready key with the survivors.
      expect(await keysUnder(client, `${name}/`)).toEqual([]);
      expect(await Promise.all(survivors.map((w) => within(10_000, w.exited)))).toEqual(survivors.map(() => 0));
    } finally {
      for (const w of workers) w.kill('SIGKILL');
    }
  });
});
