import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Session, WorkQueue } from '../src/index.js';
import { keysUnder, spawnWorker, useCluster, type Worker } from './helpers.js';
import { tally, waitForPrefixEmpty } from './queue-helpers.js';

describe('WorkQueue when worker processes are SIGKILLed mid-job', () => {
  const etcd = useCluster();

  it('acks every job in the end, loses none, and runs twice only jobs whose claimer died', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using session = await Session.create(client, { ttl: 10 });
    await using producer = new WorkQueue(session, 'crash');
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push(await producer.add(`job-${i}`));
    const dir = mkdtempSync(join(tmpdir(), 'wq-crash-'));
    const holdFile = (i: number) => join(dir, `hold-${i}`);
    const start = (i: number) =>
      spawnWorker('fixtures/work-queue-worker.ts', [cluster.endpoints.join(','), 'crash', '2', '300', holdFile(i)]);
    const workers: Worker[] = [start(0), start(1), start(2)];
    const killed: Worker[] = [];
    try {
      // Kill two workers in the middle of a job. Handshake: once its hold file exists, a worker stops
      // before acking its current job and says "holding <id>"; only then is it killed.
      for (const [i, victim] of workers.slice(0, 2).entries()) {
        await victim.waitFor(/^acked /); // it has done some work already
        writeFileSync(holdFile(i), '');
        await victim.waitFor(/^holding /);
        victim.kill('SIGKILL');
        await victim.exited;
        killed.push(victim);
      }
      workers.push(start(3));
      await waitForPrefixEmpty(client, 'crash/jobs/', 30_000);
    } finally {
      for (const w of workers) w.kill('SIGTERM');
      await Promise.all(workers.map((w) => w.exited));
      rmSync(dir, { recursive: true, force: true });
    }
    const lines = workers.flatMap((w) => w.lines);
    const acked = tally(lines.filter((l) => l.startsWith('acked ')).map((l) => l.split(' ')[1]!));
    // Every job acked, exactly once.
    expect([...acked.keys()].sort()).toEqual([...ids].sort());
    expect([...acked.values()].every((n) => n === 1)).toBe(true);
    // Jobs claimed more than once are exactly those a killed worker had claimed and not acked.
    const claims = lines.filter((l) => l.startsWith('claimed ')).map((l) => l.split(' '));
    const claimedTwice = [...tally(claims.map((c) => c[1]!))]
      .filter(([, n]) => n > 1)
      .map(([id]) => id)
      .sort();
    const diedHolding = killed
      .flatMap((w) => w.lines.filter((l) => l.startsWith('holding ')).map((l) => l.split(' ')[1]!))
      .sort();
    // Everything else a killed worker claimed, it acked.
    for (const w of killed) {
      const mine = w.lines.filter((l) => l.startsWith('claimed ')).map((l) => l.split(' ')[1]!);
      const done = new Set(w.lines.filter((l) => l.startsWith('acked ')).map((l) => l.split(' ')[1]!));
      expect(mine.filter((id) => !done.has(id))).toEqual(
        w.lines.filter((l) => l.startsWith('holding ')).map((l) => l.split(' ')[1]!),
      );
    }
    expect(diedHolding).toHaveLength(2);
    expect(claimedTwice).toEqual(diedHolding);
    for (const id of diedHolding) {
      const attempts = claims.filter((c) => c[1] === id).map((c) => Number(c[2]));
      expect(attempts).toEqual([1, 2]);
    }
    await producer.close();
    expect(await keysUnder(client, 'crash/')).toEqual([]);
  });
});
