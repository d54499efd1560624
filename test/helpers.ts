import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Etcd3, Namespace } from 'etcd3';
import { afterAll, beforeAll } from 'vitest';
import { EtcdCluster, type EtcdClusterOptions } from '../src/testing/index.js';

/** Starts a throwaway cluster for the enclosing describe/file and stops it afterwards. */
export function useCluster(options: EtcdClusterOptions = {}): () => EtcdCluster {
  let cluster: EtcdCluster | undefined;
  beforeAll(async () => {
    cluster = await EtcdCluster.start(options);
  });
  afterAll(async () => {
    await cluster?.stop();
  });
  return () => {
    if (!cluster) throw new Error('cluster not started');
    return cluster;
  };
}

/** Every key under `prefix` (empty prefix: the whole keyspace), as strings. */
export async function keysUnder(client: Namespace, prefix = ''): Promise<string[]> {
  const kvs = prefix ? await client.getAll().prefix(prefix).keys() : await client.getAll().keys();
  return kvs.sort();
}

/** Resolves with the value once `key` exists; watch-driven, bounded by `timeoutMs`. */
export async function waitForKey(client: Etcd3 | Namespace, key: string, timeoutMs = 20_000): Promise<string> {
  const watcher = await client.watch().key(key).create();
  try {
    const existing = await client.get(key).string();
    if (existing !== null) return existing;
    return await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`key ${key} did not appear within ${timeoutMs} ms`)), timeoutMs);
      watcher.on('put', (kv) => {
        clearTimeout(timer);
        resolve(kv.value.toString());
      });
    });
  } finally {
    await watcher.cancel();
  }
}

/** Resolves once `key` is absent; watch-driven, bounded by `timeoutMs`. */
export async function waitForKeyGone(client: Etcd3 | Namespace, key: string, timeoutMs = 20_000): Promise<void> {
  const watcher = await client.watch().key(key).create();
  try {
    if ((await client.get(key).string()) === null) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`key ${key} still present after ${timeoutMs} ms`)), timeoutMs);
      watcher.on('delete', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  } finally {
    await watcher.cancel();
  }
}

/** Resolves once `count` keys exist under `prefix` (watch-driven, bounded). */
export async function waitForKeyCount(client: Etcd3 | Namespace, prefix: string, count: number, timeoutMs = 20_000): Promise<void> {
  const watcher = await client.watch().prefix(prefix).create();
  try {
    const check = async () => (await client.getAll().prefix(prefix).count()) >= count;
    if (await check()) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`fewer than ${count} keys under ${prefix} after ${timeoutMs} ms`)), timeoutMs);
      watcher.on('put', () => {
        void check().then((ok) => {
          if (ok) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    });
  } finally {
    await watcher.cancel();
  }
}

/** Rejects with a clear message if `promise` has not settled within `ms`. */
export async function within<T>(ms: number, promise: Promise<T>, what = 'operation'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms); }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** True if `promise` is still pending after the event loop has had `ms` to run. */
export async function stillPending(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false;
  promise.then(() => { settled = true; }, () => { settled = true; });
  await new Promise((r) => setTimeout(r, ms));
  return !settled;
}

/** A child process running a TypeScript file under tsx, with line-oriented stdout. */
export interface Worker {
  readonly process: ChildProcess;
  readonly pid: number;
  /** Lines printed so far. */
  readonly lines: string[];
  /** Resolves with the first line (already printed or future) that matches. */
  waitFor(match: RegExp | string, timeoutMs?: number): Promise<string>;
  /** Resolves with the exit code once the process exited. */
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

const projectRoot = fileURLToPath(new URL('..', import.meta.url));

/** Runs `script` (a path relative to test/) in a separate Node process. */
export function spawnWorker(script: string, args: string[] = [], env: Record<string, string> = {}): Worker {
  const path = fileURLToPath(new URL(script, import.meta.url));
  // `--import tsx` resolves from the working directory: run from the project root.
  const child = spawn(process.execPath, ['--import', 'tsx', path, ...args], {
    cwd: projectRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    for (const w of waiters.slice()) {
      if (w.re.test(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    process: child,
    pid: child.pid!,
    lines,
    exited,
    waitFor(match, timeoutMs = 30_000) {
      const re = typeof match === 'string' ? new RegExp(match.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : match;
      const found = lines.find((l) => re.test(l));
      if (found) return Promise.resolve(found);
      return within(timeoutMs, Promise.race([
        new Promise<string>((resolve) => waiters.push({ re, resolve })),
        exited.then((code) => { throw new Error(`worker ${script} exited (${code}) before printing ${re}; stderr: ${stderr}`); }),
      ]), `worker ${script} line ${re}`);
    },
    kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}
