// Workers in one call: WorkQueue.work(handler) claims job after job, runs the handler, and acks each
// finished job in the Txn of the next claim (three requests per job). A job whose handler throws is
// given back at once and reported to onError (and dead-lettered past maxAttempts, if claimed again).
// Run: npx tsx examples/work-queue-workers.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { closeClient, createClient, Session, WorkQueue } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
const client = createClient({ hosts: etcd.endpoints });
try {
  const prefix = `jobs/workers-${process.pid}`;
  const producer = new WorkQueue(client, prefix);
  for (let i = 0; i < 20; i++) await producer.add(`resize image-${i}.png`);
  await producer.add('flaky'); // fails on its first attempt, works on its second
  await producer.add('poison'); // fails twice, then its handler dead-letters it

  await using session = await Session.create(client, { ttl: 10 });
  const queue = new WorkQueue(session, prefix, { maxAttempts: 3 });
  const stop = new AbortController();
  let done = 0;
  let settled = 0;
  const settle = () => {
    // Stop once every job is done or dead (a real worker runs until its process is told to stop).
    if (++settled === 22) stop.abort();
  };
  await queue.work(
    async (job) => {
      if (job.value === 'poison') {
        if (job.attempts < 3) throw new Error('poison failed');
        await job.deadLetter(); // a handler may end its job itself: ack, release or dead-letter
        settle();
        return;
      }
      if (job.value === 'flaky' && job.attempts === 1) throw new Error('flaky failed');
      await new Promise((r) => setTimeout(r, 20)); // the work; pass job.signal to real work
      done++;
      settle();
    },
    {
      concurrency: 4,
      signal: stop.signal,
      onError: (err, job) => console.log(`job ${job.id} attempt ${job.attempts}: ${(err as Error).message}`),
    },
  );
  // Every finished job is acked once work() returns: { jobs: 0, claimed: 0, dead: 1, waiting: 0 }.
  console.log(`${done} jobs done`, await producer.stats());
  console.log(
    'dead letters:',
    (await producer.deadLetters()).map((j) => j.value),
  );
  await producer.close();
  await client.delete().prefix(`${prefix}/`);
} finally {
  await closeClient(client);
  await etcd.close();
}
