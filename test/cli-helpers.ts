import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readdirSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll } from 'vitest';
import { findEtcdctlBinary } from '../src/testing/index.js';
import { within } from './helpers.js';

/*
 * Real processes for the CLI tests: the tool runs from source under tsx, its
 * child commands are small sh scripts. Handshakes: a child prints a line on
 * stdout (the tool's stdout, which the test reads) and then blocks reading a
 * fifo that the test writes to when it wants the child to go on.
 */

export const projectRoot = fileURLToPath(new URL('..', import.meta.url));
const bin = join(projectRoot, 'src/bin/etcd-recipes.ts');

/** A running process with line-oriented stdout and stderr. */
export interface Proc {
  readonly process: ChildProcess;
  readonly pid: number;
  readonly stdout: string[];
  readonly stderr: string[];
  /** Resolves with the first stdout line (already printed or future) that matches. */
  waitFor(match: RegExp, timeoutMs?: number): Promise<string>;
  /** Exit code (or 128 + signal number, as a shell reports it) once exited. */
  readonly exited: Promise<number>;
  /** `performance.now()` when it exited, once it has. */
  exitedAt: number | undefined;
  kill(signal?: NodeJS.Signals): void;
}

function track(child: ChildProcess, what: string): Proc {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    stdout.push(line);
    for (const w of waiters.slice()) {
      if (w.re.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  createInterface({ input: child.stderr! }).on('line', (line) => stderr.push(line));
  const proc: Proc = {
    process: child,
    pid: child.pid!,
    stdout,
    stderr,
    exitedAt: undefined,
    // 'close' rather than 'exit': every line of output has been read by then.
    exited: new Promise<number>((resolve) =>
      child.on('close', (code, signal) => {
        proc.exitedAt = performance.now();
        resolve(code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGINT' ? 2 : 15));
      }),
    ),
    waitFor(re, timeoutMs = 30_000) {
      const found = stdout.find((l) => re.test(l));
      if (found) return Promise.resolve(found);
      return within(
        timeoutMs,
        Promise.race([
          new Promise<string>((resolve) => waiters.push({ re, resolve })),
          proc.exited.then((code) => {
            throw new Error(`${what} exited (${code}) before printing ${re}; stderr: ${stderr.join('\n')}`);
          }),
        ]),
        `${what}: line ${re}`,
      );
    },
    kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
  return proc;
}

const running = new Set<Proc>();
afterAll(() => {
  // A failed test may leave processes behind: ours, by pid.
  for (const p of running) p.kill('SIGKILL');
});

/** Runs `etcd-recipes <args>` with `ETCDCTL_ENDPOINTS` set to `endpoints`. */
export function cli(
  endpoints: readonly string[],
  args: readonly string[],
  options: { env?: Record<string, string>; input?: string } = {},
): Proc {
  const env: NodeJS.ProcessEnv = { ...process.env, ETCDCTL_ENDPOINTS: endpoints.join(','), ...options.env };
  delete env.ETCD_ENDPOINTS;
  const child = spawn(process.execPath, ['--import', 'tsx', bin, ...args], {
    cwd: projectRoot,
    env,
    stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  if (options.input !== undefined) child.stdin!.end(options.input);
  const p = track(child, `etcd-recipes ${args.join(' ')}`);
  running.add(p);
  void p.exited.then(() => running.delete(p));
  return p;
}

/** Runs `etcdctl <args>` (API v3) against `endpoints`. */
export function etcdctl(endpoints: readonly string[], args: readonly string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.env.ETCDCTL_BIN ?? findEtcdctlBinary(), ['--endpoints', endpoints.join(','), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ETCDCTL_API: '3', ...env },
  });
  const p = track(child, `etcdctl ${args.join(' ')}`);
  running.add(p);
  void p.exited.then(() => running.delete(p));
  return p;
}

/** A temporary directory for fifos and logs, removed after the file's tests. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'etcd-recipes-cli-'));
  afterAll(() => {
    releaseGates(dir);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Unblocks any reader still waiting on a gate in `dir` (a child a failed test left behind): it reads EOF and exits. */
function releaseGates(dir: string): void {
  for (const name of readdirSync(dir)) {
    if (!name.startsWith('gate-')) continue;
    try {
      closeSync(openSync(join(dir, name), constants.O_WRONLY | constants.O_NONBLOCK));
    } catch {
      // ENXIO: nobody reads it.
    }
  }
}

/**
 * A child command that prints `start <label> <token> <pid>`, waits until the
 * test opens its gate (the fifo `<dir>/gate-<label>`), prints `end <label>`
 * and exits with `code`. On SIGTERM it prints `term <label>` and exits 0
 * (unless `ignoreTerm`). `label` may use shell variables (e.g. the fencing
 * token). With `log`, the start and end lines are also appended to that file,
 * in the order they happen across processes.
 */
export function gatedChild(
  dir: string,
  label: string,
  options: { code?: number; ignoreTerm?: boolean; log?: string } = {},
): string[] {
  const gate = `${dir}/gate-${label}`;
  const say = (line: string) => `echo "${line}"${options.log ? `; echo "${line}" >> "${options.log}"` : ''}`;
  // The wait runs in the background so that the shell runs its TERM trap at once (and stops it). An
  // external command with its output to /dev/null keeps no copy of the tool's stdout if orphaned.
  const trap = options.ignoreTerm
    ? `trap 'echo "ignored ${label}"' TERM`
    : `trap 'echo "term ${label}"; kill $p 2>/dev/null; exit 0' TERM`;
  const script =
    `${trap}; [ -p "${gate}" ] || mkfifo "${gate}"; ${say(`start ${label} $ETCD_RECIPES_FENCING_TOKEN $$`)}; ` +
    `cat "${gate}" > /dev/null 2>&1 & p=$!; while ! wait $p; do kill -0 $p 2>/dev/null || break; done; ` +
    `${say(`end ${label}`)}; exit ${options.code ?? 0}`;
  return ['sh', '-c', script];
}

/** Lets the gated child `label` go on (blocks until it reads its fifo). */
export async function openGate(dir: string, label: string): Promise<void> {
  const fh = await open(`${dir}/gate-${label}`, 'w');
  try {
    await fh.write('go\n');
  } finally {
    await fh.close();
  }
}

/** Creates the fifo of gate `label` now (so that a test can open it before the child starts). */
export function makeGate(dir: string, label: string): void {
  execFileSync('mkfifo', [`${dir}/gate-${label}`]);
}
