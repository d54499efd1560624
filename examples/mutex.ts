// A job scheduler's lock: only one instance runs the nightly report at a time.
// Run: npx tsx examples/mutex.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { Mutex, Session, withLock } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
try {
  const { client } = etcd;

  // 1. The scoped helper: creates a session, waits for the lock, always releases.
  await withLock(
    client,
    'locks/nightly-report',
    async ({ fencingToken, signal, ifOwner }) => {
      console.log(`withLock: holding, fencing token ${fencingToken}`);
      // A write that cannot land if the lock was lost meanwhile.
      const res = await ifOwner().then(client.put('reports/last-run').value(new Date().toISOString())).commit();
      console.log(
        `withLock: fenced write ${res.succeeded ? 'committed' : 'rejected'}; signal aborted: ${signal.aborted}`,
      );
    },
    { ttl: 10 },
  );

  // 2. Handles with `await using`, and a lock timeout from an AbortSignal.
  await using session = await Session.create(client, { ttl: 10 });
  const mutex = new Mutex(session, 'locks/nightly-report');
  {
    await using held = await mutex.acquire({ signal: AbortSignal.timeout(5000) });
    console.log(`acquire: ${held.key} token ${held.fencingToken}`);

    // Another session cannot take it right now.
    await using other = await Session.create(client, { ttl: 10 });
    console.log(`tryLock from another session: ${await new Mutex(other, 'locks/nightly-report').tryLock()}`);
  } // released here

  // 3. lock()/unlock() on the Mutex object.
  await mutex.lock();
  console.log(`lock: token ${mutex.fencingToken}`);
  await mutex.unlock();
} finally {
  await etcd.close();
}
