// A worker that outlives its session: runWithSession runs the worker loop on a session and, when the
// session is lost, waits for the loop to stop, then starts it again on a fresh session. Here the
// loss is simulated by revoking the worker's lease from another client (what etcd does to a process
// paused past its TTL); the job it held comes back and is done on the new session.
// Run: npx tsx examples/worker-recovery.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { Etcd3 } from 'etcd3';
import { runWithSession, Session, WorkQueue } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
const workerClient = new Etcd3({ hosts: etcd.endpoints });
const prefix = `recovery-example-${process.pid}`;
try {
  const producerSession = await Session.create(etcd.client, { ttl: 10 });
  const producer = new WorkQueue(producerSession, prefix);
  for (let i = 0; i < 6; i++) await producer.add(`job-${i}`);

  const stop = new AbortController();
  let sessions = 0;
  let revoked = false;
  await runWithSession(
    workerClient,
    async (session, signal) => {
      sessions++;
      console.log(`session ${sessions}: lease ${session.leaseHex}`);
      const queue = new WorkQueue(session, prefix); // built from this session, inside fn
      for (;;) {
        const job = await queue.claim({ signal });
        console.log(`session ${sessions}: claimed ${job.value} (attempt ${job.attempts})`);
        if (job.value === 'job-2' && !revoked) {
          revoked = true;
          console.log('  (the lease is revoked from outside, as if this process had been paused past its TTL)');
          await etcd.client.leaseClient.leaseRevoke({ ID: session.leaseId });
          // Our session notices (its keepalive is answered "gone"), aborts `signal`, and this
          // claim is lost: the side effect, fenced by the claim, is refused.
          await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
          const fenced = await etcd.client
            .if(job.key, 'Create', '==', job.fencingToken.toString())
            .then(etcd.client.put(`${prefix}-done/${job.value}`).value('stale'))
            .commit();
          console.log(`  fenced side effect after the loss: ${fenced.succeeded ? 'landed (bug!)' : 'refused'}`);
          return;
        }
        await job
          .ifOwner()
          .then(etcd.client.put(`${prefix}-done/${job.value}`).value(session.leaseHex))
          .commit();
        await job.ack();
        if ((await producer.stats()).jobs === 0) stop.abort();
      }
    },
    {
      ttl: 5,
      signal: stop.signal,
      onLost: (reason) => console.log(`lost: ${(reason as Error).message}; starting again`),
    },
  ).catch((err: unknown) => {
    if (!stop.signal.aborted) throw err;
  });

  const done = await etcd.client.getAll().prefix(`${prefix}-done/`).strings();
  console.log(`all jobs done in ${sessions} sessions:`, done);
  if (Object.keys(done).length !== 6 || sessions !== 2) throw new Error('unexpected outcome');
  await producerSession.close();
  await etcd.client.delete().prefix(`${prefix}`).exec();
} finally {
  workerClient.close();
  await etcd.close();
}
