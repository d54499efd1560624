// A job scheduler: 3 worker instances share a backlog of jobs, each worker runs up to
// 2 jobs at a time, and a Semaphore caps the whole fleet at 3 running jobs (say, 3 GPUs).
// Run: npx tsx examples/semaphore-scheduler.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { isRecipeError, Semaphore, Session, type PermitHandle } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
try {
  const { client } = etcd;
  const backlog = Array.from({ length: 10 }, (_, i) => `job-${String(i + 1).padStart(2, '0')}`);
  let running = 0;
  let peak = 0;

  /** One job: some work that stops early if the permit may be lost, then a fenced write of its result. */
  async function runJob(worker: string, job: string, permit: PermitHandle): Promise<void> {
    running++;
    peak = Math.max(peak, running);
    console.log(`${worker} starts ${job} (permit token ${permit.fencingToken}, ${running} running)`);
    await new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, 150 + Math.random() * 200);
      permit.signal.addEventListener(
        'abort',
        () => {
          clearTimeout(timer);
          reject(permit.signal.reason);
        },
        { once: true },
      );
    });
    // Only lands while our permit is still ours.
    await permit
      .ifOwner()
      .then(client.put(`jobs/results/${job}`).value(worker))
      .commit();
    running--;
  }

  async function worker(name: string): Promise<void> {
    await using session = await Session.create(client, { ttl: 10 });
    const gpus = new Semaphore(session, 'sem/gpu', 3);
    // Two job loops per worker: one session holds several permits at once, one handle each.
    await Promise.all(
      [1, 2].map(async () => {
        for (;;) {
          await using permit = await gpus.acquire({ signal: AbortSignal.timeout(30_000) });
          const job = backlog.shift();
          if (!job) break;
          await runJob(name, job, permit);
        } // the permit is released at the end of each iteration, also when the job throws
      }),
    );
  }

  await Promise.all(['worker-a', 'worker-b', 'worker-c'].map(worker));
  const results = await client.getAll().prefix('jobs/results/').keys();
  console.log(`done: ${results.length} results, at most ${peak} jobs ran at once`);

  // Every user of a name must agree on the count: a different one is rejected before queueing.
  await using session = await Session.create(client, { ttl: 10 });
  try {
    await new Semaphore(session, 'sem/gpu', 8).acquire();
  } catch (err) {
    if (!isRecipeError(err, 'INVALID_ARGUMENT')) throw err;
    console.log(`a Semaphore with 8 permits is refused: ${err.message}`);
  }

  // tryAcquire never waits; usage() shows the line.
  const gpus = new Semaphore(session, 'sem/gpu', 3);
  const held = await Promise.all([gpus.acquire(), gpus.acquire(), gpus.acquire()]);
  console.log(`all 3 held: tryAcquire gives ${await gpus.tryAcquire()}; usage ${JSON.stringify(await gpus.usage())}`);
  await Promise.all(held.map((h) => h.release()));
} finally {
  await etcd.close();
}
