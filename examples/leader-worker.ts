// A job scheduler that only schedules while it is the elected leader.
// Three schedulers run here (each on its own connection, as three processes would); one
// leads at a time. The example stops the leader gracefully (a prompt handover), then has its
// successor lose its lease behind its back (as if etcd had expired it), and shows that it
// stops at once, another takes over, and it campaigns again.
// Run: npx tsx examples/leader-worker.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { Etcd3 } from 'etcd3';
import { observeLeader, runAsLeader, type LeaderInfo } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const ELECTION = 'elections/scheduler';
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });

const etcd = await exampleEtcd();

/** One scheduler "process": campaigns, schedules while leader, and keeps campaigning until stopped. */
async function scheduler(id: string, stop: AbortSignal): Promise<void> {
  const client = new Etcd3({ hosts: etcd.endpoints });
  try {
    // runAsLeader rejects if the task throws (after resigning, so another takes over at once):
    // keep campaigning after such a failure until we are told to stop.
    while (!stop.aborted) {
      try {
        await runAsLeader(
          client,
          ELECTION,
          async (signal, ctx) => {
            console.log(`[${id}] elected, term ${ctx.revision}: scheduling`);
            for (let job = 1; !signal.aborted; job++) {
              // A fenced write: it cannot land once this term is over, even if we were paused.
              const res = await ctx
                .ifLeader()
                .then(client.put(`jobs/${ctx.revision}-${job}`).value(id))
                .commit()
                .catch(() => undefined);
              if (res?.succeeded) console.log(`[${id}]   scheduled job ${ctx.revision}-${job}`);
              await sleep(150, signal);
            }
            console.log(`[${id}] stopped scheduling: ${(signal.reason as Error).message}`);
          },
          { value: id, ttl: 5, signal: stop },
        );
      } catch (err) {
        if (stop.aborted) break;
        console.log(`[${id}] task failed (${(err as Error).message}); campaigning again`);
        await sleep(1000, stop);
      }
    }
  } finally {
    client.close();
  }
}

try {
  const { client } = etcd;
  const watching = new AbortController();
  const observing = (async () => {
    for await (const { leader, revision } of observeLeader(client, ELECTION, { signal: watching.signal })) {
      console.log(`(observer) revision ${revision}: ${leader ? `leader is ${leader.value}` : 'no leader'}`);
    }
  })();

  const stops = new Map(['a', 'b', 'c'].map((id) => [id, new AbortController()]));
  /** The first of our schedulers other than `previous` to lead, as soon as it is elected (watching, not polling). */
  const nextLeader = async (previous?: string): Promise<LeaderInfo> => {
    for await (const { leader } of observeLeader(client, ELECTION, { signal: AbortSignal.timeout(30_000) })) {
      if (leader && stops.has(leader.value) && leader.value !== previous) return leader;
    }
    throw new Error('no leader was elected within 30 s');
  };

  const running = [...stops].map(([id, c]) => scheduler(id, c.signal));
  const first = (await nextLeader()).value;
  await sleep(700); // let it schedule a few jobs
  console.log(`--- stopping the leader ${first} gracefully: it finishes, resigns, and the next one takes over at once`);
  stops.get(first)!.abort(new Error('shutdown'));
  const second = await nextLeader(first);
  await sleep(700);
  console.log(`--- the lease of ${second.value} disappears (as if etcd expired it): its task is told at once`);
  await client.leaseClient.leaseRevoke({ ID: second.lease });
  await sleep(900);

  console.log('--- stopping everyone');
  for (const c of stops.values()) c.abort(new Error('shutdown'));
  await Promise.all(running);
  watching.abort();
  await observing;
  const jobs = await client.getAll().prefix('jobs/').strings();
  console.log(`${Object.keys(jobs).length} jobs scheduled, by ${[...new Set(Object.values(jobs))].join(', ')}`);
} finally {
  await etcd.close();
}
