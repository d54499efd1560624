/*
 * The messages between a benchmark (parent) and its worker processes, over
 * the IPC channel of child_process.fork. A worker sets its scenario up, says
 * `ready`, and only then is told to run until a wall-clock deadline, so no
 * process ever guesses when the others are connected.
 */

/** What a worker process measured in one run. */
export interface Report {
  /** Operations completed (sections, cycles, commits, jobs...). */
  ops: number;
  /** Per-operation latencies, ms. */
  latencies: number[];
  /** Scenario-specific records (e.g. [calledAt, acquiredAt, unlockAt] per section, epoch ms). */
  records: number[][];
  /** Scenario-specific counters, summed over processes by the parent. */
  counts: Record<string, number>;
  /** This process's CPU time (user + system) during the run, ms. */
  cpuMs: number;
}

export type ToWorker =
  | { type: 'setup'; scenario: string; params: unknown; endpoints: string[]; proc: number; procs: number }
  | { type: 'run'; endAt: number; warmUp?: boolean }
  | { type: 'stop' }
  | { type: 'close' };

export type FromWorker =
  | { type: 'ready' }
  | { type: 'running' }
  | { type: 'report'; report: Report }
  | { type: 'closed' }
  | { type: 'error'; message: string };
