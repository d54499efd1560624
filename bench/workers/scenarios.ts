import * as diagnostics from 'node:diagnostics_channel';
import type { Etcd3 } from 'etcd3';
import { isRecipeError, type Job, Mutex, Queue, runSTM, Semaphore, Session, WorkQueue } from '../../src/index.js';
import { epochMs } from '../lib.js';
import type { Report } from './protocol.js';

/*
 * The workloads that benchmarks run in worker processes (bench/workers/
 * child.ts). Each scenario is set up in every process of a group with that
 * process's share of the workers (worker i lives in process i % procs),
 * each worker on its own client (connection) unless said otherwise, and
 * runs until a shared wall-clock deadline. Times that cross processes are
 * epoch ms (performance.timeOrigin + now), comparable on one machine.
 */

export interface WorkerEnv {
  endpoints: string[];
  /** This process's index, 0-based, and the number of processes. */
  proc: number;
  procs: number;
  /** A new client built with createClient; closed when the process closes. */
  client(): Etcd3;
}

export interface Runner {
  run(endAt: number): Promise<Omit<Report, 'cpuMs'>>;
  close(): Promise<void>;
}

type Scenario = (env: WorkerEnv, params: never) => Promise<Runner>;

/** The workers of `total` that live in this process. */
function mine(env: WorkerEnv, total: number): number[] {
  return Array.from({ length: total }, (_, i) => i).filter((i) => i % env.procs === env.proc);
}

async function connect(clients: Etcd3[]): Promise<void> {
  await Promise.all(clients.map((c) => c.get('bench/connect').string()));
}

/** An AbortSignal that aborts at the deadline (for calls that wait: dequeue, claim). */
function deadlineSignal(endAt: number): { signal: AbortSignal; clear(): void } {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), Math.max(0, endAt - epochMs()));
  return { signal: ac.signal, clear: () => clearTimeout(timer) };
}

const empty = (): Omit<Report, 'cpuMs'> => ({ ops: 0, latencies: [], records: [], counts: {} });

/**
 * Contended Mutex: `workers` workers on one lock name, each section
 * lock → get + put a counter → unlock. Records [calledAt, acquiredAt, unlockAt].
 */
async function mutex(env: WorkerEnv, p: { workers: number; lock: string; counter: string }): Promise<Runner> {
  const ids = mine(env, p.workers);
  const clients = ids.map(() => env.client());
  await connect(clients);
  const sessions = await Promise.all(clients.map((c) => Session.create(c, { ttl: 30 })));
  return {
    async run(endAt) {
      const out = empty();
      await Promise.all(
        sessions.map(async (session, i) => {
          const client = clients[i]!;
          const m = new Mutex(session, p.lock);
          while (epochMs() < endAt) {
            const calledAt = epochMs();
            await m.lock();
            const acquiredAt = epochMs();
            const n = Number(await client.get(p.counter).string());
            await client.put(p.counter).value(String(n + 1));
            out.ops++;
            out.records.push([calledAt, acquiredAt, epochMs()]);
            await m.unlock();
          }
        }),
      );
      return out;
    },
    close: async () => {
      await Promise.all(sessions.map((s) => s.close()));
    },
  };
}

/**
 * The chain floor in a worker process: one client runs delete, range (keys,
 * limit 2), get, put in sequence, the four calls on a contended section's
 * critical path (the holder's delete, the successor's read, the workload's
 * get + put) without the lock. Each process runs its own chain on its own keys.
 */
async function chain(env: WorkerEnv, p: { prefix: string }): Promise<Runner> {
  const client = env.client();
  await connect([client]);
  const lock = `${p.prefix}/lock-${env.proc}`;
  const counter = `${p.prefix}/counter-${env.proc}`;
  await client.put(counter).value('0');
  return {
    async run(endAt) {
      const out = empty();
      while (epochMs() < endAt) {
        const t = performance.now();
        await client.delete().key(lock);
        await client.getAll().prefix(lock).limit(2).keys();
        const n = Number(await client.get(counter).string());
        await client.put(counter).value(String(n + 1));
        out.ops++;
        out.latencies.push(performance.now() - t);
      }
      return out;
    },
    close: async () => undefined,
  };
}

/**
 * Many locks: `names` lock names with `perName` workers each. Worker k of a
 * name lives in process k % procs; the workers of one process share one
 * session (and client) per k ÷ procs, so that no session queues twice on a
 * name. Section: lock → get + put the name's counter → unlock.
 */
async function manyLocks(env: WorkerEnv, p: { names: number; perName: number; prefix: string }): Promise<Runner> {
  const ks = mine(env, p.perName);
  const clients = ks.map(() => env.client());
  await connect(clients);
  const sessions = await Promise.all(clients.map((c) => Session.create(c, { ttl: 30 })));
  return {
    async run(endAt) {
      const out = empty();
      const workers: Promise<void>[] = [];
      for (let n = 0; n < p.names; n++) {
        const counter = `${p.prefix}/counter-${n}`;
        sessions.forEach((session, j) => {
          const client = clients[j]!;
          const m = new Mutex(session, `${p.prefix}/lock-${n}`);
          workers.push(
            (async () => {
              while (epochMs() < endAt) {
                await m.lock();
                const v = Number(await client.get(counter).string());
                await client.put(counter).value(String(v + 1));
                out.ops++;
                out.counts[`n${n}`] = (out.counts[`n${n}`] ?? 0) + 1;
                await m.unlock();
              }
            })(),
          );
        });
      }
      await Promise.all(workers);
      return out;
    },
    close: async () => {
      await Promise.all(sessions.map((s) => s.close()));
    },
  };
}

/**
 * Oversubscribed Semaphore: `workers` workers, `permits` permits, acquire →
 * release with no hold. Records [calledAt, acquiredAt, releaseAt].
 */
async function semaphore(env: WorkerEnv, p: { workers: number; permits: number; name: string }): Promise<Runner> {
  const ids = mine(env, p.workers);
  const clients = ids.map(() => env.client());
  await connect(clients);
  const sessions = await Promise.all(clients.map((c) => Session.create(c, { ttl: 30 })));
  const sems = sessions.map((s) => new Semaphore(s, p.name, p.permits));
  for (const s of sems) await (await s.acquire()).release(); // warm-up: one cycle each
  return {
    async run(endAt) {
      const out = empty();
      await Promise.all(
        sems.map(async (sem) => {
          while (epochMs() < endAt) {
            const calledAt = epochMs();
            const h = await sem.acquire();
            const acquiredAt = epochMs();
            out.ops++;
            out.records.push([calledAt, acquiredAt, epochMs()]);
            await h.release();
          }
        }),
      );
      return out;
    },
    close: async () => {
      await Promise.all(sessions.map((s) => s.close()));
    },
  };
}

/**
 * 1 producer (worker 0, one enqueue at a time) and `consumers` consumers
 * (workers 1..consumers), each on its own client. kind 'queue': Queue
 * enqueue/dequeue; 'work': WorkQueue add/claim+ack; 'work-next': add /
 * claim({ ack: last }); 'raw': the floor, a put and a delete per item with
 * keys handed over in process. Values are sequence numbers. Records: [0, seq,
 * enqueuedAt] from the producer, [1, seq, deliveredAt] from consumers
 * (delivered = dequeued, or acked: for 'work-next', when the ack landed).
 */
async function queue(
  env: WorkerEnv,
  p: { kind: 'raw' | 'queue' | 'work' | 'work-next'; consumers: number; prefix: string },
): Promise<Runner> {
  const ids = mine(env, p.consumers + 1);
  const clients = ids.map(() => env.client());
  await connect(clients);
  const sessions: Session[] = [];
  const queues: Queue[] = [];
  type Put = (v: string) => Promise<unknown>;
  /** The value delivered, and when (default: when take resolved). */
  type Take = (signal: AbortSignal) => Promise<string | [string, number]>;
  const roles: ({ put: Put } | { take: Take })[] = [];
  // The raw floor hands keys over in process (one process only): a put, then a delete by whoever takes it.
  const handed: string[] = [];
  const idle: (() => void)[] = [];
  for (const [j, id] of ids.entries()) {
    const client = clients[j]!;
    if (p.kind === 'raw') {
      if (env.procs !== 1) throw new Error('the raw floor runs in one process');
      let n = 0;
      roles.push(
        id === 0
          ? {
              put: async (v) => {
                const key = `${p.prefix}/${n++}`;
                await client.put(key).value(v);
                handed.push(`${key}\u0000${v}`);
                idle.shift()?.();
              },
            }
          : {
              take: async (signal) => {
                while (!handed.length) {
                  signal.throwIfAborted();
                  await new Promise<void>((resolve) => {
                    const wake = () => {
                      signal.removeEventListener('abort', wake);
                      resolve();
                    };
                    signal.addEventListener('abort', wake, { once: true });
                    idle.push(wake);
                  });
                }
                const [key, v] = handed.shift()!.split('\u0000');
                await client.delete().key(key!);
                return v!;
              },
            },
      );
    } else if (p.kind === 'queue') {
      const q = new Queue(client, p.prefix);
      queues.push(q);
      roles.push(id === 0 ? { put: (v) => q.enqueue(v) } : { take: (signal) => q.dequeue({ signal }) });
    } else {
      const session = await Session.create(client, { ttl: 30 });
      sessions.push(session);
      const wq = new WorkQueue(session, p.prefix);
      roles.push(
        id === 0
          ? { put: (v) => wq.add(v) }
          : p.kind === 'work'
            ? {
                take: async (signal) => {
                  const job = await wq.claim({ signal });
                  await job.ack();
                  return job.value;
                },
              }
            : { take: claimAcking(wq) },
      );
    }
  }
  let seq = 0;
  return {
    async run(endAt) {
      const out = empty();
      const deadline = deadlineSignal(endAt);
      await Promise.all(
        roles.map(async (role) => {
          if ('put' in role) {
            while (epochMs() < endAt) {
              const v = `${seq++}`;
              await role.put(v);
              out.records.push([0, Number(v), epochMs()]);
              out.counts.produced = (out.counts.produced ?? 0) + 1;
            }
            return;
          }
          while (epochMs() < endAt) {
            let got: string | [string, number];
            try {
              got = await role.take(deadline.signal);
            } catch (err) {
              if (deadline.signal.aborted) return;
              throw err;
            }
            const [v, at] = typeof got === 'string' ? [got, epochMs()] : got;
            out.ops++;
            out.records.push([1, Number(v), at]);
          }
        }),
      );
      deadline.clear();
      return out;
    },
    close: async () => {
      await Promise.all(queues.map((q) => q.close()));
      await Promise.all(sessions.map((s) => s.close()));
    },
  };
}

/** When each job's ack landed, by job ID, from the library's `ack` tracing channel (read once by claimAcking). */
const ackedAt = new Map<string, number>();
let ackTimes: ((id: string) => number) | undefined;

function ackTime(): (id: string) => number {
  if (!ackTimes) {
    // Not the job's signal: reading it opens a watch on the claim key, which the row would then pay for.
    const none = () => undefined;
    diagnostics.tracingChannel<string, { id: string; error?: unknown }>('etcd-recipes:work-queue:ack').subscribe({
      start: none,
      end: none,
      asyncStart: none,
      error: none,
      asyncEnd: (context) => {
        if (context.error === undefined) ackedAt.set(context.id, epochMs());
      },
    });
    ackTimes = (id) => {
      const at = ackedAt.get(id) ?? epochMs();
      ackedAt.delete(id);
      return at;
    };
  }
  return ackTimes;
}

/** A WorkQueue consumer whose claims ack its last job ('work-next'): resolves with the job acked, when it landed. */
function claimAcking(wq: WorkQueue): (signal: AbortSignal) => Promise<[string, number]> {
  const landedAt = ackTime();
  let last: Job | undefined;
  return async (signal) => {
    for (;;) {
      const acked = last;
      try {
        last = await wq.claim({ signal, ack: acked });
      } catch (err) {
        // The run's end aborted the wait for the next job: the ack may have landed before it.
        if (!acked?.done || !signal.aborted) throw err;
        last = undefined;
        return [acked.value, landedAt(acked.id)];
      }
      if (acked) return [acked.value, landedAt(acked.id)];
    }
  };
}

/**
 * The plain bank workload: `workers` workers, each transfer reads one
 * account, then the other, then writes both, through runSTM (no prefetch);
 * or 'raw': the hand-written floor (one read Txn for both, one commit Txn
 * with mod compares, the Else branch re-reading). Accounts are `<prefix>NNN`.
 * Latency per transfer, retries included; counts: bodies, gaveUp. With
 * `shared`, the transfers of a process share one client.
 */
async function bank(
  env: WorkerEnv,
  p: { kind: 'stm' | 'raw'; workers: number; prefix: string; accounts: number; shared?: boolean },
): Promise<Runner> {
  const ids = mine(env, p.workers);
  // shared: the process's transfers share one client (one connection), as an app's would.
  const one = p.shared ? env.client() : undefined;
  const clients = ids.map(() => one ?? env.client());
  await connect(one ? [one] : clients);
  const account = (i: number) => `${p.prefix}${String(i).padStart(3, '0')}`;
  return {
    async run(endAt) {
      const out = empty();
      out.counts.bodies = 0;
      out.counts.gaveUp = 0;
      await Promise.all(
        clients.map(async (client) => {
          while (epochMs() < endAt) {
            const i = Math.floor(Math.random() * p.accounts);
            let j = Math.floor(Math.random() * (p.accounts - 1));
            if (j >= i) j++;
            const amount = 1 + Math.floor(Math.random() * 50);
            const t = performance.now();
            let bodies = 0;
            try {
              if (p.kind === 'stm') {
                await runSTM(
                  client,
                  async (tx) => {
                    bodies++;
                    const a = Number(await tx.get(account(i)));
                    const b = Number(await tx.get(account(j)));
                    if (a < amount) return;
                    tx.put(account(i), String(a - amount));
                    tx.put(account(j), String(b + amount));
                  },
                  { retries: 10 },
                );
              } else {
                bodies = await rawTransfer(client, account(i), account(j), amount);
              }
              out.ops++;
              out.latencies.push(performance.now() - t);
            } catch (err) {
              if (!isRecipeError(err, 'STM_CONFLICT') && !(err instanceof GaveUp)) throw err;
              if (err instanceof GaveUp) bodies = 11;
              out.counts.gaveUp!++;
            }
            out.counts.bodies! += bodies;
          }
        }),
      );
      return out;
    },
    close: async () => undefined,
  };
}

class GaveUp extends Error {}

/** The hand-written floor: read both in one Txn, commit with mod compares, Else re-reads both; retry at once. */
export async function rawTransfer(client: Etcd3, from: string, to: string, amount: number): Promise<number> {
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
  throw new GaveUp('gave up');
}

export const scenarios: Record<string, Scenario> = {
  mutex: mutex as Scenario,
  chain: chain as Scenario,
  manyLocks: manyLocks as Scenario,
  semaphore: semaphore as Scenario,
  queue: queue as Scenario,
  bank: bank as Scenario,
};
