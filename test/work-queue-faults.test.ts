import { describe, expect, it } from 'vitest';
import { Session, WorkQueue } from '../src/index.js';
import { keysUnder, spawnWorker, useCluster, within, type Worker } from './helpers.js';
import { tally, waitForPrefixEmpty } from './queue-helpers.js';

/** Index of the first line at or after `from` that matches; waits for the worker's output (bounded). */
function nextLine(worker: Worker, re: RegExp, from: number, timeoutMs = 20_000): Promise<number> {
  return within(timeoutMs, (async () => {
    for (;;) {
      const i = worker.lines.findIndex((l, k) => k >= from && re.test(l));
      if (i >= 0) return i;
      await new Promise<void>((resolve, reject) => {
        worker.process.stdout!.once('data', () => setImmediate(resolve));
        void worker.exited.then(() => reject(new Error(`worker exited before printing ${re}`)));
      });
    }
  })(), `worker line ${re}`);
}

describe('WorkQueue when worker processes are SIGKILLed mid-job', () => {
  const etcd = useCluster();

  it('acks every job in the end, loses none, and runs twice only jobs whose claimer died', async () => {
    const cluster = etcd();
    const client = cluster.client();
    await using session = await Session.create(client, { ttl: 10 });
    const producer = new WorkQueue(session, 'crash');
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push(await producer.add(`job-${i}`));
    const start = () => spawnWorker('fixtures/work-queue-worker.ts', [cluster.endpoints.join(','), 'crash', '2', '300']);
    const workers: Worker[] = [start(), start(), start()];
    const killed: Worker[] = [];
    try {
      // Kill two workers while each is in the middle of a job: it printed "claimed" and has not started its ack.
      for (const victim of workers.slice(0, 2)) {
        const acked = await nextLine(victim, /^acked /, 0); // it has done some work already
        let at = acked + 1;
        for (;;) {
          const claimed = await nextLine(victim, /^claimed /, at);
          if (victim.lines.length === claimed + 1) break; // still working on it
          at = claimed + 1;
        }
        victim.kill('SIGKILL');
        await victim.exited;
        killed.push(victim);
      }
      workers.push(start());
      await waitForPrefixEmpty(client, 'crash/jobs/', 30_000);
    } finally {
      for (const w of workers) w.kill('SIGTERM');
      await Promise.all(workers.map((w) => w.exited));
    }
    const lines = workers.flatMap((w) => w.lines);
    const acked = tally(lines.filter((l) => l.startsWith('acked ')).map((l) => l.split(' ')[1]!));
    // Every job acked, exactly once.
    expect([...acked.keys()].sort()).toEqual([...ids].sort());
    expect([...acked.values()].every((n) => n === 1)).toBe(true);
    // Jobs claimed more than once are exactly those a killed worker had claimed and not acked.
    const claims = lines.filter((l) => l.startsWith('claimed ')).map((l) => l.split(' '));
    const claimedTwice = [...tally(claims.map((c) => c[1]!))].filter(([, n]) => n > 1).map(([id]) => id).sort();
    const diedHolding = killed.flatMap((w) => {
      const mine = w.lines.filter((l) => l.startsWith('claimed ')).map((l) => l.split(' ')[1]!);
      const done = new Set(w.lines.filter((l) => l.startsWith('acked ')).map((l) => l.split(' ')[1]!));
      return mine.filter((id) => !done.has(id));
    }).sort();
    expect(diedHolding).toHaveLength(2);
    expect(claimedTwice).toEqual(diedHolding);
    for (const id of diedHolding) {
      const attempts = claims.filter((c) => c[1] === id).map((c) => Number(c[2]));
      expect(attempts).toEqual([1, 2]);
    }
    expect(await keysUnder(client, 'crash/')).toEqual([]);
  });
});
