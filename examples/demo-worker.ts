// One worker process of the demo: takes turns on a lock and does fenced work under it.
// argv: <name> <endpoints> <rounds>
import { Etcd3 } from 'etcd3';
import { Mutex, Session } from 'etcd-recipes';

const [name, endpoints, rounds] = process.argv.slice(2) as [string, string, string];
const client = new Etcd3({ hosts: endpoints.split(',') });
// A short TTL so that a crashed worker's lock is freed quickly.
const session = await Session.create(client, { ttl: 2 });
const mutex = new Mutex(session, 'demo/report-lock');

for (let round = 1; round <= Number(rounds); round++) {
  const asked = performance.now();
  await using held = await mutex.acquire();
  const waited = Math.round(performance.now() - asked);
  console.log(
    `${name}: acquired ${held.key} with fencing token ${held.fencingToken} after waiting ${waited} ms (round ${round})`,
  );
  // The "work": a write that only lands while we still own the lock.
  await new Promise((r) => setTimeout(r, 300));
  const res = await held
    .ifOwner()
    .then(client.put('demo/report').value(`${name} round ${round}`))
    .commit();
  console.log(`${name}: fenced write ${res.succeeded ? 'committed' : 'REJECTED (lock lost)'}; releasing`);
}
await session.close();
client.close();
console.log(`${name}: done`);
