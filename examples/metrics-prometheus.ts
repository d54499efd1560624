// The recipes' metrics on a Prometheus /metrics endpoint, through prom-client (which the app
// brings: etcd-recipes has no dependency on it). Two sessions hand a lock over, a leader is
// elected and resigns, an STM transaction conflicts once; then the endpoint is scraped once.
// Run: npx tsx examples/metrics-prometheus.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { createServer } from 'node:http';
import { Registry } from 'prom-client';
import { Election, Mutex, RecipeMetrics, runSTM, Session, subscribeDiagnostics } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

// 1. Wire it once at start-up: every recipe in this process is counted from here on.
const registry = new Registry();
const metrics = new RecipeMetrics();
metrics.exportToPrometheus(registry);

const server = createServer((_req, res) => {
  void registry.metrics().then((text) => {
    res.setHeader('Content-Type', registry.contentType);
    res.end(text);
  });
});
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));

const etcd = await exampleEtcd();
try {
  const { client } = etcd;
  // 2. Some work: a lock handoff...
  {
    await using a = await Session.create(client, { ttl: 10 });
    await using b = await Session.create(client, { ttl: 10 });
    const first = await new Mutex(a, 'locks/report').acquire();
    // The channels tell when b is in line behind a.
    const queued = new Promise<void>((resolve) => {
      const stop = subscribeDiagnostics('etcd-recipes:lock:wait', () => {
        stop();
        resolve();
      });
    });
    const second = new Mutex(b, 'locks/report').acquire();
    await queued;
    await first.release();
    await (await second).release();
    // ... an election ...
    const election = new Election(a, 'elections/scheduler');
    await election.campaign('node-a');
    await election.resign();
  }
  // ... and an STM transaction that conflicts once, then commits.
  await client.put('accounts/a').value('100');
  let attempt = 0;
  await runSTM(client, async (tx) => {
    const balance = Number(await tx.get('accounts/a'));
    if (++attempt === 1) await client.put('accounts/a').value('90'); // a concurrent writer
    tx.put('accounts/a', String(balance - 10));
  });

  // 3. Scrape it, as Prometheus would.
  const { port } = server.address() as { port: number };
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const interesting = text
    .split('\n')
    .filter((l) =>
      [
        'etcd_recipes_lock_wait_duration_seconds_count',
        'etcd_recipes_lock_wait_duration_seconds_sum',
        'etcd_recipes_lock_held',
        'etcd_recipes_session_created_total',
        'etcd_recipes_election_campaign_duration_seconds_count',
        'etcd_recipes_stm_attempt_conflicted_total',
      ].some((name) => l.startsWith(name)),
    );
  console.log(interesting.join('\n'));
  if (!interesting.some((l) => l.startsWith('etcd_recipes_stm_attempt_conflicted_total')))
    throw new Error('expected the STM conflict to be counted');
} finally {
  metrics.close();
  server.close();
  await etcd.close();
}
