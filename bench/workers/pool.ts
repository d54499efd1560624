import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { epochMs, WARM_UP_SECONDS } from '../lib.js';
import type { FromWorker, Report, ToWorker } from './protocol.js';

/*
 * A scenario's workers spread over `procs` worker processes. The parent
 * forks them, sends `setup`, and waits for every `ready` (each process has
 * connected its clients and created its sessions) before the clock starts:
 * a handshake, not a sleep. `run` sends one wall-clock deadline to all and
 * gathers their reports; the group's elapsed time runs from the send to the
 * deadline. One process is just procs = 1, so both columns share one path.
 */

const childPath = fileURLToPath(new URL('./child.ts', import.meta.url));
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

interface Member {
  child: ChildProcess;
  pending: ((msg: FromWorker) => void)[];
  exited: Promise<void>;
  failure: Error | undefined;
}

export interface GroupOptions {
  /** Worker processes (1 = all workers in one process). */
  procs: number;
  /** Record a CPU profile of each process (--cpu-prof) into this folder. */
  profileDir?: string;
  /** Seconds the group runs unmeasured before its first measured run (default {@link WARM_UP_SECONDS}). */
  warmUpSeconds?: number;
}

export interface GroupRun {
  reports: Report[];
  /** Seconds from the start message to the deadline. */
  elapsed: number;
  /** CPU ms of all worker processes during the run. */
  cpuMs: number;
}

export class WorkerGroup {
  /** The unmeasured warm-up run: checks of etcd's state (counters, lost items) must count its operations too. */
  warmUp: GroupRun | undefined;

  private constructor(private readonly members: Member[]) {}

  /** Forks the processes, sets the scenario up in each, and resolves once all are ready. */
  static async start(
    endpoints: string[],
    scenario: string,
    params: unknown,
    options: GroupOptions,
  ): Promise<WorkerGroup> {
    const execArgv = ['--import', 'tsx'];
    const env = { ...process.env };
    if (options.profileDir) {
      mkdirSync(options.profileDir, { recursive: true });
      execArgv.push('--cpu-prof', '--cpu-prof-dir', options.profileDir);
      env.BENCH_PROFILE_DIR = options.profileDir;
    } else {
      delete env.BENCH_PROFILE_DIR;
    }
    const members = Array.from({ length: options.procs }, (): Member => {
      const child = fork(childPath, [], {
        execArgv,
        env,
        cwd: repoRoot,
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      const m: Member = {
        child,
        pending: [],
        failure: undefined,
        exited: new Promise((resolve) => child.once('exit', () => resolve())),
      };
      child.on('message', (msg: FromWorker) => {
        if (msg.type === 'error') {
          m.failure = new Error(`worker ${child.pid}: ${msg.message}`);
          for (const p of m.pending.splice(0)) p(msg);
          return;
        }
        m.pending.shift()?.(msg);
      });
      child.once('exit', (code) => {
        m.failure ??= code === 0 ? undefined : new Error(`worker ${child.pid} exited with ${code}`);
        for (const p of m.pending.splice(0)) p({ type: 'error', message: 'exited' });
      });
      return m;
    });
    const group = new WorkerGroup(members);
    try {
      await group.all((proc) => ({ type: 'setup', scenario, params, endpoints, proc, procs: options.procs }), 'ready');
      const warmUp = options.warmUpSeconds ?? WARM_UP_SECONDS;
      if (warmUp > 0) group.warmUp = await group.run(warmUp, true);
    } catch (err) {
      await group.kill();
      throw err;
    }
    return group;
  }

  /** Sends one message to every process and waits for the expected answer from each. */
  private async all(
    msg: (proc: number) => ToWorker,
    expect: FromWorker['type'],
    timeoutMs = 120_000,
  ): Promise<FromWorker[]> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`workers did not answer ${expect} within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([
        timeout,
        Promise.all(
          this.members.map(
            (m, i) =>
              new Promise<FromWorker>((resolve, reject) => {
                if (m.failure) return reject(m.failure);
                m.pending.push((answer) => {
                  if (answer.type !== expect)
                    reject(m.failure ?? new Error(`worker ${m.child.pid} answered ${answer.type}, expected ${expect}`));
                  else resolve(answer);
                });
                m.child.send(msg(i));
              }),
          ),
        ),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Runs every process until `seconds` from now; their reports, in process order. */
  async run(seconds: number, warmUp = false): Promise<GroupRun> {
    const started = epochMs();
    const endAt = started + seconds * 1000;
    const answers = await this.all(() => ({ type: 'run', endAt, warmUp }), 'report', seconds * 1000 + 120_000);
    const reports = answers.map((a) => (a as Extract<FromWorker, { type: 'report' }>).report);
    return { reports, elapsed: (endAt - started) / 1000, cpuMs: reports.reduce((t, r) => t + r.cpuMs, 0) };
  }

  /** Closes every process's scenario and clients, and waits for the processes to exit. */
  async close(): Promise<void> {
    try {
      await this.all(() => ({ type: 'close' }), 'closed', 30_000);
      await Promise.all(this.members.map((m) => m.exited));
    } finally {
      await this.kill();
    }
  }

  private async kill(): Promise<void> {
    for (const m of this.members) if (m.child.exitCode === null && m.child.signalCode === null) m.child.kill();
    await Promise.all(this.members.map((m) => m.exited));
  }
}

/** Sums the reports of a run: ops, latencies and records concatenated, counts added. */
export function merged(run: GroupRun): Omit<Report, 'cpuMs'> & { cpuMs: number; perSecond: number; cpuPerOp: number } {
  const ops = run.reports.reduce((t, r) => t + r.ops, 0);
  const counts: Record<string, number> = {};
  for (const r of run.reports) for (const [k, v] of Object.entries(r.counts)) counts[k] = (counts[k] ?? 0) + v;
  return {
    ops,
    latencies: run.reports.flatMap((r) => r.latencies),
    records: run.reports.flatMap((r) => r.records),
    counts,
    cpuMs: run.cpuMs,
    perSecond: ops / run.elapsed,
    cpuPerOp: run.cpuMs / ops,
  };
}
