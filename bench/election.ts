import type { Etcd3 } from 'etcd3';
import { Election, observeLeader, Session } from '../src/index.js';
import {
  cpuMs,
  fmt,
  grpcMessages,
  interleaved,
  percentile,
  requestsBetween,
  table,
  timedRow,
  type BenchContext,
} from './lib.js';

/*
 * npm run bench -- election
 *
 * Uncontended campaign+resign cycles against the raw floor (create-if-absent
 * Txn + delete) and etcd3's Election, and the handoff: the latency from the
 * leader's resign() call to the next candidate's campaign() resolving, with
 * the successor queued just before the resign. The same for etcd3's Election,
 * and the time until an observer (another connection) sees the new leader.
 */

/** Resolves once `key` exists (reads in a loop; used outside the timed window only). */
async function untilExists(client: Etcd3, key: string): Promise<void> {
  for (let i = 0; i < 10_000; i++) {
    if ((await client.get(key).string()) !== null) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error(`${key} never appeared`);
}

interface Handoffs {
  latencies: number[];
  observed: number[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Ours: two candidates on separate connections hand leadership back and
 * forth. The successor's key exists before the resign; with `settleMs` > 0
 * it has also had that long to settle into its wait (watch created).
 */
async function oursHandoff(ctx: BenchContext, seconds: number, settleMs: number): Promise<Handoffs> {
  const name = `bench/election/handoff-${settleMs}`;
  const clients = [ctx.client(), ctx.client()];
  const sessions = await Promise.all(clients.map((c) => Session.create(c, { ttl: 30 })));
  const elections = sessions.map((s) => new Election(s, name));
  const observerClient = ctx.client();
  const observer = observeLeader(observerClient, name);
  await observer.next();
  const latencies: number[] = [];
  const observed: number[] = [];
  await elections[0]!.campaign('c0');
  let leader = 0;
  const end = performance.now() + seconds * 1000;
  for (let i = 0; performance.now() < end || i < 20; i++) {
    const next = 1 - leader;
    const campaigning = elections[next]!.campaign(`c${next}`);
    await untilExists(clients[0]!, elections[next]!.key);
    if (settleMs) await sleep(settleMs);
    // Drain what the observer has seen so far, so the next state is the successor.
    while (observer.current?.leader?.value !== `c${leader}`) await observer.next();
    const t0 = performance.now();
    const resigned = elections[leader]!.resign();
    const seen = (async () => {
      for (;;) {
        const s = (await observer.next()).value;
        if (s?.leader?.value === `c${next}`) return performance.now();
      }
    })();
    await campaigning;
    const t1 = performance.now();
    await resigned;
    const t2 = await seen;
    if (i >= 5) {
      latencies.push(t1 - t0);
      observed.push(t2 - t0);
    }
    leader = next;
  }
  await observer.return();
  await elections[leader]!.resign();
  await Promise.all(sessions.map((s) => s.close()));
  return { latencies, observed };
}

/** etcd3's Election: each campaign grants its own lease; the successor is queued before the resign. */
async function etcd3Handoff(ctx: BenchContext, seconds: number, settleMs: number): Promise<number[]> {
  const clients = [ctx.client(), ctx.client()];
  const elections = clients.map((c) => c.election(`bench-handoff-${settleMs}`, 30));
  const latencies: number[] = [];
  let leaderIdx = 0;
  let leader = elections[0]!.campaign('c0');
  await leader.wait();
  const end = performance.now() + seconds * 1000;
  for (let i = 0; performance.now() < end || i < 10; i++) {
    const next = 1 - leaderIdx;
    const successor = elections[next]!.campaign(`c${next}`);
    const elected = successor.wait();
    await untilExists(clients[0]!, await successor.getCampaignKey());
    if (settleMs) await sleep(settleMs);
    const t0 = performance.now();
    const resigned = leader.resign();
    await elected;
    const t1 = performance.now();
    await resigned;
    if (i >= 3) latencies.push(t1 - t0);
    leader = successor;
    leaderIdx = next;
  }
  await leader.resign();
  return latencies;
}

/** Requests etcd received per campaign+resign cycle (no keepalives), over `n` cycles. */
async function requestsPerCycle(
  ctx: BenchContext,
  n: number,
  cycle: () => Promise<void>,
): Promise<{ kv: number; watch: number; lease: number }> {
  const before = await grpcMessages(ctx.metricsUrl);
  for (let i = 0; i < n; i++) await cycle();
  const after = await grpcMessages(ctx.metricsUrl);
  const r = requestsBetween(before, after);
  const d = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
  return { kv: r.kv / n, watch: r.watch / n, lease: (d('LeaseGrant') + d('LeaseRevoke')) / n };
}

export default async function run(ctx: BenchContext): Promise<void> {
  const client = ctx.client();
  const s = ctx.seconds;

  // (a) raw floor: the two writes a campaign/resign cycle cannot avoid.
  const floorKey = Buffer.from('bench/election/floor');
  const floorOp = async () => {
    await client.if(floorKey, 'Create', '==', 0).then(client.put(floorKey).value('v')).commit();
    await client.delete().key(floorKey);
  };
  // (b) ours, uncontended.
  const session = await Session.create(client, { ttl: 30 });
  const e = new Election(session, 'bench/election/solo');
  const oursOp = async () => {
    await e.campaign('v');
    await e.resign();
  };
  // (c) etcd3's Election: grants a lease per campaign, revokes it on resign.
  const etcd3Election = client.election('bench-solo', 30);
  const etcd3Op = async () => {
    const c = etcd3Election.campaign('v');
    await c.wait();
    await c.resign();
  };
  const [floor, ours, etcd3] = await interleaved(s, [floorOp, oursOp, etcd3Op]);
  const oursReq = await requestsPerCycle(ctx, 100, oursOp);
  const etcd3Req = await requestsPerCycle(ctx, 100, etcd3Op);
  await session.close();

  const req = (r: { kv: number; watch: number; lease: number }) =>
    `${fmt.n(r.kv, 1)} KV + ${fmt.n(r.watch, 1)} watch + ${fmt.n(r.lease, 1)} lease`;
  table(
    'Uncontended campaign + resign (one client)',
    ['what', 'cycles/s', 'p50 ms', 'p99 ms', 'ratio', 'requests/cycle', 'client CPU ms/cycle'],
    [
      timedRow('(a) raw floor: create-if-absent Txn + delete', floor!, '1.00×', '2 KV'),
      timedRow(
        '(b) etcd-recipes Election campaign+resign',
        ours!,
        `${fmt.ratio(ours!.perSecond / floor!.perSecond)} of floor`,
        req(oursReq),
      ),
      timedRow(
        '(c) etcd3 Election campaign+wait+resign',
        etcd3!,
        `ours = ${fmt.ratio(ours!.perSecond / etcd3!.perSecond)} etcd3`,
        req(etcd3Req),
      ),
    ],
  );

  const rows: (string | number)[][] = [];
  for (const settleMs of [0, 10]) {
    const when = settleMs ? `queued ${settleMs} ms before` : 'queued just before';
    let cpu = process.cpuUsage();
    const handoff = await oursHandoff(ctx, s, settleMs);
    const oursCpu = cpuMs(cpu) / handoff.latencies.length;
    cpu = process.cpuUsage();
    const etcd3Handoffs = await etcd3Handoff(ctx, Math.max(1, s / 2), settleMs);
    const etcd3Cpu = cpuMs(cpu) / etcd3Handoffs.length;
    rows.push(
      [
        `etcd-recipes: resign() → successor's campaign() resolves (${when})`,
        handoff.latencies.length,
        fmt.ms(percentile(handoff.latencies, 50)),
        fmt.ms(percentile(handoff.latencies, 99)),
        fmt.cpu(oursCpu),
        settleMs ? '' : 'p50 ≤ 5, p99 ≤ 20',
      ],
      [
        `etcd-recipes: resign() → an observer sees the successor (${when})`,
        handoff.observed.length,
        fmt.ms(percentile(handoff.observed, 50)),
        fmt.ms(percentile(handoff.observed, 99)),
        '(same loop)',
        '',
      ],
      [
        `etcd3 Election: resign() → successor's wait() resolves (${when})`,
        etcd3Handoffs.length,
        fmt.ms(percentile(etcd3Handoffs, 50)),
        fmt.ms(percentile(etcd3Handoffs, 99)),
        fmt.cpu(etcd3Cpu),
        '',
      ],
    );
  }
  table(
    'Handoff: the leader calls resign(); the successor, on another connection, is elected',
    ['what', 'handoffs', 'p50 ms', 'p99 ms', 'client CPU ms/handoff', 'target'],
    rows,
  );
  console.log('\n"queued just before": the successor\'s key exists when resign() is called (its wait may still be');
  console.log('setting up); "queued 10 ms before": it has settled into its wait. The observer is on a third');
  console.log("connection. Go's concurrency.Election measured ~92 ms p50 for this handoff on this kind of machine");
  console.log(
    '(perf-facts). Go and etcd3 start the predecessor watch at the revision of their read; etcd 3.4 serves a',
  );
  console.log('watch whose start revision is not above the current one from its 100 ms catch-up loop, so a settled');
  console.log('successor hears of the delete only at the next tick. etcd3 is fast only when the delete lands before');
  console.log(
    "its read. client CPU ms/handoff: the bench process's CPU over the whole handoff loop (campaigns, resigns,",
  );
  console.log('the observer, the check that the successor is queued) ÷ handoffs.');
}
