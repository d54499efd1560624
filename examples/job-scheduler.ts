// A job scheduler on a WorkQueue: producers add jobs, workers claim and ack them, and a worker
// that crashes in the middle of a job loses nothing: its claim expires with its lease and another
// worker runs the job again (attempt 2). A poison job that keeps failing ends in the dead letters.
// Run: npx tsx examples/job-scheduler.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import type { Etcd3 } from 'etcd3';
import { closeClient, createClient, runWithSession, WorkQueue } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
const clients: Etcd3[] = [];
try {
  const prefix = `jobs/example-${process.pid}`;
  const connect = () => {
    const c = createClient({ hosts: etcd.endpoints });
    clients.push(c);
    return c;
  };

  // Producers: two of them, adding 12 jobs; urgent ones get a lower priority number. Adding needs no
  // session (a leader-only producer would pass { guard: election.ifLeader() }: docs/patterns.md).
  const producer = new WorkQueue(connect(), prefix);
  await Promise.all(
    [0, 1].map(async (p) => {
      for (let i = 0; i < 6; i++)
        await producer.add(JSON.stringify({ producer: p, n: i }), { priority: i === 0 ? 0 : 100 });
    }),
  );
  await producer.add('poison', { priority: 50 });
  console.log('added', await producer.stats());

  const done = new Set<string>();
  const stop = new AbortController();

  // Stop the workers once every job is acked or dead-lettered.
  const checkFinished = async () => {
    if ((await producer.stats()).jobs === 0) stop.abort();
  };

  // A worker outlives its sessions: runWithSession starts it again on a fresh one after a loss
  // (a pause past the TTL, a partition). A short TTL so that a crashed worker's jobs come back quickly.
  async function worker(name: string, crash = false): Promise<void> {
    await runWithSession(
      connect(),
      async (session, signal) => {
        const queue = new WorkQueue(session, prefix, { maxAttempts: 2 });
        for (;;) {
          const job = await queue.claim({ signal });
          console.log(`${name}: claimed ${job.id} (attempt ${job.attempts}, token ${job.fencingToken}) ${job.value}`);
          if (job.value === 'poison') {
            console.log(`${name}: ${job.id} failed; giving it back`);
            await job.release(); // claimed again later; past maxAttempts it goes to the dead letters
            await checkFinished();
            continue;
          }
          if (crash && done.size >= 2) {
            // Simulate a crash: stop keeping the lease alive and never ack. etcd deletes the claim
            // when the lease expires (2 s), and another worker claims the job again.
            console.log(`${name}: crashes in the middle of ${job.id}`);
            session.orphan();
            return;
          }
          await new Promise((r) => setTimeout(r, 100)); // the work; pass job.signal to real work
          await job.ack();
          done.add(job.id);
          await checkFinished();
        }
      },
      { ttl: 2, signal: stop.signal },
    ).catch((err: unknown) => {
      if (!stop.signal.aborted) throw err;
    });
  }

  await Promise.all([worker('worker-a', true), worker('worker-b'), worker('worker-c')]);
  console.log(`all ${done.size} jobs acked`, await producer.stats());
  console.log(
    'dead letters:',
    (await producer.deadLetters()).map((j) => `${j.id} ${j.value}`),
  );
  await producer.close();
  await connect().delete().prefix(`${prefix}/`);
} finally {
  await Promise.all(clients.map((c) => closeClient(c)));
  await etcd.close();
}
