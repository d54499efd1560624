// Barriers in a deploy: a gate that app instances wait at while a migration
// runs, and a batch of workers that start each round together and finish it
// together.
// Run: npx tsx examples/barriers.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { setTimeout as sleep } from 'node:timers/promises';
import { Barrier, DoubleBarrier, isRecipeError, Session } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
try {
  const { client } = etcd;
  await client.delete().prefix('deploy/');

  // 1. A deploy gate (Barrier). The coordinator holds it while the migration
  //    runs; instances wait at it, and all start the moment it is released.
  const gate = new Barrier(client, 'deploy/v42/gate');
  console.log(`coordinator: gate held: ${await gate.hold()}`);
  const instances = ['web-1', 'web-2', 'web-3'].map(async (name) => {
    await new Barrier(client, 'deploy/v42/gate').wait({ signal: AbortSignal.timeout(30_000) });
    console.log(`${name}: gate open, serving v42`);
  });
  console.log('coordinator: migrating the schema...');
  await sleep(300);
  await gate.release();
  await Promise.all(instances);

  // A hold attached to a session opens the gate by itself if the holder dies
  // (here: closes its session). A plain hold() would stay until released.
  const holder = await Session.create(client, { ttl: 5 });
  await gate.hold({ session: holder });
  const waiting = gate.wait();
  await holder.close(); // as if the coordinator had crashed: its lease ends
  await waiting;
  console.log(`gate opened by the holder's lease ending; held now: ${await gate.isHeld()}`);

  // 2. A batch of three workers (DoubleBarrier). Each round starts once all
  //    three have entered, and ends for everyone once all three have left.
  const batch = 'deploy/v42/warm-caches';
  await Promise.all(
    [1, 2, 3].map(async (n) => {
      await using session = await Session.create(client, { ttl: 10 });
      const barrier = new DoubleBarrier(session, batch, 3);
      for (let round = 1; round <= 2; round++) {
        await barrier.enter({ signal: AbortSignal.timeout(30_000) });
        console.log(`worker-${n}: round ${round} started`);
        if (n === 1 && round === 1) {
          // A fourth worker is turned away while the round is in progress.
          await using late = await Session.create(client, { ttl: 10 });
          await new DoubleBarrier(late, batch, 3).enter().catch((err: unknown) => {
            if (!isRecipeError(err, 'BARRIER_FULL')) throw err;
            console.log(`worker-4: ${err.message}`);
          });
        }
        await sleep(100 * n); // work of different lengths
        console.log(`worker-${n}: round ${round} done, waiting for the others`);
        await barrier.leave({ signal: AbortSignal.timeout(30_000) });
        console.log(`worker-${n}: round ${round} finished by everyone`);
      }
    }),
  );
  console.log(`keys left under deploy/: ${(await client.getAll().prefix('deploy/').keys()).length}`);
} finally {
  await etcd.close();
}
