// A shared configuration: many readers at once, one writer at a time, writers not starved.
// Run: npx tsx examples/rwmutex.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { RWMutex, Session } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
try {
  const { client } = etcd;
  await client.put('config/limits').value('v1');
  const sessions = await Promise.all([0, 1, 2, 3].map(() => Session.create(client, { ttl: 10 })));
  const t0 = performance.now();
  const log = (s: string) => console.log(`${(performance.now() - t0).toFixed(0).padStart(4)} ms  ${s}`);

  // Three readers hold the read lock together.
  const readers = await Promise.all(sessions.slice(0, 3).map((s) => new RWMutex(s, 'locks/config').acquireRead()));
  log(`3 readers hold the read lock; config = ${await client.get('config/limits').string()}`);

  // A writer queues behind them; a reader arriving after the writer waits for it (no writer starvation).
  const rw = new RWMutex(sessions[3]!, 'locks/config');
  const writing = rw.lock({ signal: AbortSignal.timeout(10_000) }).then(async () => {
    log(`writer holds the lock (fencing token ${rw.fencingToken})`);
    await rw.ifOwner().then(client.put('config/limits').value('v2')).commit(); // fenced write
    await rw.unlock();
    log('writer released');
  });
  await new Promise((r) => setTimeout(r, 100));
  const late = new RWMutex(sessions[0]!, 'locks/config').acquireRead().then(async (h) => {
    log(`late reader holds the read lock; config = ${await client.get('config/limits').string()}`);
    await h.release();
  });

  await new Promise((r) => setTimeout(r, 200));
  log('first readers release');
  await Promise.all(readers.map((h) => h.release()));
  await Promise.all([writing, late]);

  // tryLock never waits.
  {
    await using read = await new RWMutex(sessions[1]!, 'locks/config').acquireRead();
    log(`while ${read.key} is held, tryLock gives ${await new RWMutex(sessions[2]!, 'locks/config').tryLock()}`);
  }
  await Promise.all(sessions.map((s) => s.close()));
} finally {
  await etcd.close();
}
