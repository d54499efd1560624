import type { Etcd3 } from 'etcd3';
import { isRecipeError, runSTM, type STMIsolation } from '../src/index.js';
import { fmt, grpcMessages, percentile, requestsBetween, table, type BenchContext } from './lib.js';
import { buildGo, GoProcess } from './workers/go.js';
import { merged, WorkerGroup } from './workers/pool.js';
import { formatSummary, summarize } from './workers/profile-summary.js';

/*
 * npm run bench -- stm
 *
 * The bank workload: 100 accounts (opened in one Txn), W workers on their own
 * connections, each moving a random amount between two random accounts, as
 * fast as it can for BENCH_SECONDS, at W = 1, 8 and 32:
 *
 *   raw floor   hand-written: one read Txn for both balances, one commit Txn
 *               with MOD(k) == rev compares, Else re-reads both (retry at once)
 *   ours        runSTM at each isolation level (retries 10)
 *   etcd3       client.stm({ isolation, retries: 10 }).transact(...)
 *
 * Per run: commits/s, conflicts per commit (failed commit attempts ÷ commits),
 * transfers given up after the retries ran out, latency of a whole transfer
 * (retries included) p50/p99, KV requests etcd received per commit, and
 * client CPU per commit, and whether the total of all balances was conserved.
 * Every contender has its own freshly opened accounts; at each W the
 * contenders take turns in three slices of BENCH_SECONDS / 3 each.
 *
 * STM_ONLY=<regexp> and STM_W=1,8 narrow a run (for profiling).
 *
 * Then the plain bank workload (the issue's): C = 8 transfers at a time,
 * each get(a), then get(b), then put, put, through runSTM with no prefetch,
 * in worker processes: the raw floor and runSTM in one process with a client
 * per transfer, runSTM in one process with one shared client, runSTM in 4
 * processes, and Go's clientv3/concurrency STM (etcd 3.4's own, built from
 * bench/go/stmbank when Go is installed) in one process with a client per
 * transfer and with one shared client, in the same run, taking turns in three
 * slices. With --profile, the one-process, one-client runSTM worker is
 * profiled and its top costs printed. STM_PLAIN_ONLY=1 runs only this part.
 */

const ACCOUNTS = 100;
const OPENING = 1000;
const levels: STMIsolation[] = ['serializable-snapshot', 'serializable', 'repeatable-reads', 'read-committed'];
/** etcd3's `Isolation` is a const enum; these are its values. */
const etcd3Isolation: Record<STMIsolation, number> = {
  'serializable-snapshot': 0,
  serializable: 1,
  'repeatable-reads': 2,
  'read-committed': 3,
};

/** One transfer; returns how many times the body ran (1 = no conflict). Throws when it gave up. */
type Transfer = (client: Etcd3, from: string, to: string, amount: number) => Promise<number>;

interface RunResult {
  what: string;
  workers: number;
  commits: number;
  perSecond: number;
  conflictsPerCommit: number;
  gaveUp: number;
  latencies: number[];
  kvPerCommit: number;
  /** Client-process CPU time per commit, ms (user + system; the whole process, so etcd3's gRPC work included). */
  cpuPerCommit: number;
  conserved: boolean;
}

let runNumber = 0;

async function openAccounts(client: Etcd3, prefix: string): Promise<string[]> {
  const keys = Array.from({ length: ACCOUNTS }, (_, i) => `${prefix}${String(i).padStart(3, '0')}`);
  await client.kv.txn({
    compare: [],
    failure: [],
    success: keys.map((k) => ({ request_put: { key: Buffer.from(k), value: Buffer.from(String(OPENING)) } })),
  } as never);
  return keys;
}

/** One contender at one W: its own accounts, run in several short slices, results summed. */
class BankRun {
  readonly latencies: number[] = [];
  commits = 0;
  bodies = 0;
  gaveUp = 0;
  elapsed = 0;
  requests = 0;
  cpuMs = 0;
  prefix = `bench/stm/${++runNumber}/`;
  accounts: string[] = [];

  constructor(
    readonly ctx: BenchContext,
    readonly clients: Etcd3[],
    readonly what: string,
    readonly workers: number,
    readonly transfer: Transfer,
  ) {}

  async open(): Promise<void> {
    this.accounts = await openAccounts(this.clients[0]!, this.prefix);
  }

  async slice(seconds: number): Promise<void> {
    const { accounts } = this;
    let stop = false;
    const before = await grpcMessages(this.ctx.metricsUrl);
    const cpu = process.cpuUsage();
    const started = performance.now();
    const timer = setTimeout(() => {
      stop = true;
    }, seconds * 1000);
    await Promise.all(
      Array.from({ length: this.workers }, async (_, w) => {
        const client = this.clients[w]!;
        while (!stop) {
          const i = Math.floor(Math.random() * ACCOUNTS);
          let j = Math.floor(Math.random() * (ACCOUNTS - 1));
          if (j >= i) j++;
          const amount = 1 + Math.floor(Math.random() * 50);
          const t = performance.now();
          try {
            const ran = await this.transfer(client, accounts[i]!, accounts[j]!, amount);
            this.bodies += ran;
            this.commits++;
            this.latencies.push(performance.now() - t);
          } catch (err) {
            const runs = (err as { bodies?: number }).bodies;
            if (runs === undefined) throw err;
            this.bodies += runs;
            this.gaveUp++;
          }
        }
      }),
    );
    this.elapsed += (performance.now() - started) / 1000;
    const used = process.cpuUsage(cpu);
    this.cpuMs += (used.user + used.system) / 1000;
    clearTimeout(timer);
    this.requests += requestsBetween(before, await grpcMessages(this.ctx.metricsUrl)).kv;
  }

  async result(): Promise<RunResult> {
    const values = Object.values(await this.clients[0]!.getAll().prefix(this.prefix).strings()).map(Number);
    const total = values.reduce((a, b) => a + b, 0);
    return {
      what: this.what,
      workers: this.workers,
      commits: this.commits,
      perSecond: this.commits / this.elapsed,
      conflictsPerCommit: (this.bodies - this.commits) / this.commits,
      gaveUp: this.gaveUp,
      latencies: this.latencies,
      kvPerCommit: this.requests / this.commits,
      cpuPerCommit: this.cpuMs / this.commits,
      conserved: values.length === ACCOUNTS && total === ACCOUNTS * OPENING,
    };
  }
}

/** Tags a give-up error with how many times the body ran. */
function gaveUp(err: unknown, bodies: number): never {
  throw Object.assign(new Error('gave up'), { bodies, cause: err });
}

/** The hand-written floor: read both, commit with mod compares, Else re-reads both; retry at once. */
const rawTransfer: Transfer = async (client, from, to, amount) => {
  const keys = [Buffer.from(from), Buffer.from(to)];
  const reads = keys.map((key) => ({ request_range: { key } }));
  let res = await client.kv.txn({ compare: [], success: reads, failure: [] } as never);
  for (let bodies = 1; bodies <= 11; bodies++) {
    const [a, b] = res.responses.map((r) => r.response_range!.kvs[0]!);
    const balance = Number(a!.value.toString());
    if (balance < amount) return bodies;
    const commit = await client.kv.txn({
      compare: [a!, b!].map((kv) => ({ key: kv.key, target: 'Mod', result: 'Equal', mod_revision: kv.mod_revision })),
      success: [
        { request_put: { key: keys[0], value: Buffer.from(String(balance - amount)) } },
        { request_put: { key: keys[1], value: Buffer.from(String(Number(b!.value.toString()) + amount)) } },
      ],
      failure: reads,
    } as never);
    if (commit.succeeded) return bodies;
    res = commit; // the Else branch's fresh reads
  }
  return gaveUp(undefined, 11);
};

function oursTransfer(isolation: STMIsolation): Transfer {
  return async (client, from, to, amount) => {
    let bodies = 0;
    try {
      await runSTM(
        client,
        async (tx) => {
          bodies++;
          const [a, b] = await Promise.all([tx.get(from), tx.get(to)]);
          const balance = Number(a);
          if (balance < amount) return;
          tx.put(from, String(balance - amount));
          tx.put(to, String(Number(b) + amount));
        },
        { isolation, retries: 10 },
      );
      return bodies;
    } catch (err) {
      if (isRecipeError(err, 'STM_CONFLICT')) gaveUp(err, bodies);
      throw err;
    }
  };
}

function etcd3Transfer(isolation: STMIsolation): Transfer {
  return async (client, from, to, amount) => {
    let bodies = 0;
    try {
      await client.stm({ isolation: etcd3Isolation[isolation] as never, retries: 10 }).transact(async (tx) => {
        bodies++;
        const [a, b] = await Promise.all([tx.get(from).string(), tx.get(to).string()]);
        const balance = Number(a);
        if (balance < amount) return;
        await Promise.all([tx.put(from).value(String(balance - amount)), tx.put(to).value(String(Number(b) + amount))]);
      });
      return bodies;
    } catch (err) {
      if ((err as Error).constructor?.name === 'STMConflictError') gaveUp(err, bodies);
      throw err;
    }
  };
}

/** One contender of the plain workload, whatever runs it (worker processes or Go). */
interface PlainContender {
  what: string;
  procs: number;
  /** The transfers of a process share one client (else each has its own). */
  shared: boolean;
  prefix: string;
  run(
    seconds: number,
  ): Promise<{ ops: number; bodies: number; gaveUp: number; latencies: number[]; cpuMs: number; elapsed: number }>;
  close(): Promise<void>;
}

async function plainBank(ctx: BenchContext): Promise<void> {
  const admin = ctx.client();
  const workers = 8;
  const contenders: PlainContender[] = [];
  const newPrefix = async () => {
    const prefix = `bench/stm/plain/${contenders.length}/`;
    await openAccounts(admin, prefix);
    return prefix;
  };
  const group = async (
    what: string,
    kind: 'raw' | 'stm',
    procs: number,
    shared: boolean,
    profileDir?: string,
  ): Promise<PlainContender> => {
    const prefix = await newPrefix();
    const g = await WorkerGroup.start(
      ctx.endpoints,
      'bank',
      { kind, workers, prefix, accounts: ACCOUNTS, shared },
      { procs, profileDir },
    );
    return {
      what,
      procs,
      shared,
      prefix,
      async run(seconds) {
        const r = await g.run(seconds);
        const m = merged(r);
        return {
          ops: m.ops,
          bodies: m.counts.bodies ?? 0,
          gaveUp: m.counts.gaveUp ?? 0,
          latencies: m.latencies,
          cpuMs: m.cpuMs,
          elapsed: r.elapsed,
        };
      },
      close: () => g.close(),
    };
  };
  const profileDir = ctx.profileDir ? `${ctx.profileDir}stm-plain` : undefined;
  contenders.push(await group('raw floor (read Txn + commit Txn)', 'raw', 1, false));
  contenders.push(await group('etcd-recipes runSTM', 'stm', 1, false));
  contenders.push(await group('etcd-recipes runSTM', 'stm', 1, true, profileDir));
  contenders.push(await group('etcd-recipes runSTM', 'stm', 4, false));
  const go = buildGo('stmbank');
  if ('path' in go) {
    for (const shared of [false, true]) {
      const prefix = await newPrefix();
      const args = ['-endpoints', ctx.endpoints.join(','), '-workers', String(workers), '-prefix', prefix];
      const p = await GoProcess.start(go.path, [...args, '-accounts', String(ACCOUNTS), `-shared=${shared}`]);
      contenders.push({
        what: 'Go clientv3/concurrency STM (etcd 3.4)',
        procs: 1,
        shared,
        prefix,
        async run(seconds) {
          const { report, elapsed } = await p.run<{
            ops: number;
            bodies: number;
            latencies: number[] | null;
            cpuMs: number;
          }>(seconds);
          return {
            ops: report.ops,
            bodies: report.bodies,
            gaveUp: 0,
            latencies: report.latencies ?? [],
            cpuMs: report.cpuMs,
            elapsed,
          };
        },
        close: () => p.close(),
      });
    }
  } else {
    console.log(`\n(Go row skipped: ${go.skipped})`);
  }
  const totals = contenders.map(() => ({
    ops: 0,
    bodies: 0,
    gaveUp: 0,
    latencies: [] as number[],
    cpuMs: 0,
    elapsed: 0,
    kv: 0,
  }));
  const rounds = 3;
  try {
    for (let round = 0; round < rounds; round++) {
      for (const [i, c] of contenders.entries()) {
        const before = await grpcMessages(ctx.metricsUrl);
        const r = await c.run(ctx.seconds / rounds);
        const t = totals[i]!;
        t.kv += requestsBetween(before, await grpcMessages(ctx.metricsUrl)).kv;
        t.ops += r.ops;
        t.bodies += r.bodies;
        t.gaveUp += r.gaveUp;
        t.latencies.push(...r.latencies);
        t.cpuMs += r.cpuMs;
        t.elapsed += r.elapsed;
      }
    }
  } finally {
    for (const c of contenders) await c.close();
  }
  const conserved = await Promise.all(
    contenders.map(async (c) => {
      const values = Object.values(await admin.getAll().prefix(c.prefix).strings()).map(Number);
      return values.length === ACCOUNTS && values.reduce((a, b) => a + b, 0) === ACCOUNTS * OPENING;
    }),
  );
  const rate = (i: number) => totals[i]!.ops / totals[i]!.elapsed;
  // Each row against Go with the same connections (one client per transfer, or one shared client).
  const goFor = (c: PlainContender) => contenders.findIndex((g) => g.what.startsWith('Go') && g.shared === c.shared);
  table(
    `Plain bank workload: C = ${workers}, get(a), get(b), put, put, no prefetch, ${ACCOUNTS} accounts, ` +
      `${ctx.seconds} s per row in ${rounds} slices`,
    [
      'what',
      'processes',
      'connections',
      'commits/s',
      '÷ Go STM',
      '÷ raw floor',
      'conflicts/commit',
      'gave up',
      'p50 ms',
      'p99 ms',
      'KV req/commit',
      'client CPU ms/commit',
      'total conserved',
    ],
    contenders.map((c, i) => {
      const t = totals[i]!;
      const g = goFor(c);
      return [
        c.what,
        c.procs,
        c.shared ? `1 per process` : `1 per transfer`,
        fmt.n(rate(i)),
        g >= 0 ? fmt.ratio(rate(i) / rate(g)) : '-',
        fmt.ratio(rate(i) / rate(0)),
        fmt.n((t.bodies - t.ops) / t.ops, 2),
        t.gaveUp,
        fmt.ms(percentile(t.latencies, 50)),
        fmt.ms(percentile(t.latencies, 99)),
        fmt.n(t.kv / t.ops, 2),
        fmt.cpu(t.cpuMs / t.ops),
        conserved[i] ? 'yes' : 'NO',
      ];
    }),
  );
  console.log('\nEach contender has its own 100 accounts. "1 per transfer": each of the 8 concurrent transfers has');
  console.log('its own client (connection); "1 per process": they share one. ÷ Go STM compares with Go on the same');
  console.log("connections. runSTM and Go's STM run at serializable-snapshot (both defaults); Go's retries without");
  console.log('limit, runSTM gives up after 11 attempts.');
  console.log("client CPU ms/commit: CPU time of the worker processes (the Go process's own rusage for Go).");
  if (profileDir)
    console.log(
      formatSummary('runSTM, plain bank workload, one process, one client (self time)', summarize(profileDir), 15),
    );
  if (conserved.some((ok) => !ok)) throw new Error('plain bank workload: total not conserved');
}

export default async function run(ctx: BenchContext): Promise<void> {
  if (process.env.STM_PLAIN_ONLY) return plainBank(ctx);
  const only = process.env.STM_ONLY ? new RegExp(process.env.STM_ONLY) : undefined;
  const onlyW = process.env.STM_W ? process.env.STM_W.split(',').map(Number) : undefined;
  const clients = Array.from({ length: 32 }, () => ctx.client());
  await Promise.all(clients.map((c) => c.get('bench/stm/connect').string())); // connect before the clock starts
  const contenders: [string, Transfer][] = [
    ['raw floor (read Txn + commit Txn)', rawTransfer],
    ...levels.map((l): [string, Transfer] => [`etcd-recipes runSTM ${l}`, oursTransfer(l)]),
    ...levels.map((l): [string, Transfer] => [`etcd3 stm ${l}`, etcd3Transfer(l)]),
  ];
  const results: RunResult[] = [];
  const rounds = 3;
  for (const workers of onlyW ?? [1, 8, 32]) {
    // Contenders take turns in short slices, so that drift in a shared machine hits all alike.
    const runs = contenders
      .filter(([w]) => !only || only.test(w))
      .map(([what, transfer]) => new BankRun(ctx, clients, what, workers, transfer));
    for (const r of runs) await r.open();
    for (let round = 0; round < rounds; round++) {
      for (const r of runs) await r.slice(ctx.seconds / rounds);
    }
    for (const r of runs) results.push(await r.result());
  }
  const floor = (w: number) => results.find((r) => r.workers === w && r.what.startsWith('raw')) ?? results[0]!;
  table(
    `STM bank transfers: ${ACCOUNTS} accounts, W workers on their own connections, ` +
      `${ctx.seconds} s per row in ${rounds} slices`,
    [
      'W',
      'what',
      'commits/s',
      '÷ raw floor',
      'conflicts/commit',
      'gave up',
      'p50 ms',
      'p99 ms',
      'KV req/commit',
      'client CPU ms/commit',
      'total conserved',
    ],
    results.map((r) => [
      r.workers,
      r.what,
      fmt.n(r.perSecond),
      fmt.ratio(r.perSecond / floor(r.workers).perSecond),
      fmt.n(r.conflictsPerCommit, 2),
      r.gaveUp,
      fmt.ms(percentile(r.latencies, 50)),
      fmt.ms(percentile(r.latencies, 99)),
      fmt.n(r.kvPerCommit, 2),
      fmt.ms(r.cpuPerCommit),
      r.conserved ? 'yes' : 'NO',
    ]),
  );
  console.log('\nA transfer reads both balances and writes both (or nothing, if the first is short of money).');
  console.log('Latency is per transfer, retries included. conflicts/commit = failed commit attempts per commit;');
  console.log('"gave up" counts transfers whose 11 attempts all conflicted. read-committed has no compares, so');
  console.log('concurrent transfers overwrite each other: its total is not conserved under contention (by design).');
  const broken = results.filter((r) => !r.conserved && !r.what.endsWith('read-committed'));
  if (broken.length)
    throw new Error(`total not conserved: ${broken.map((r) => `${r.what} W=${r.workers}`).join(', ')}`);
  await plainBank(ctx);
}
