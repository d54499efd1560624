import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Etcd3, type Namespace } from 'etcd3';
import { afterAll, afterEach, beforeAll, expect } from 'vitest';
import { openWatch } from '../src/core/watch-hub.js';
import { EtcdCluster, type EtcdClusterOptions, FaultProxy } from '../src/testing/index.js';

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

/**
 * Fault proxies in front of member 0, and clients, for the enclosing describe: each is closed after
 * its test. `plain` clients are etcd3's own, with its default fault policies (it re-sends a failed
 * call unseen), on channels of their own.
 */
export function useProxies(etcd: () => EtcdCluster) {
  const proxies: FaultProxy[] = [];
  const clients: Etcd3[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await Promise.all(proxies.splice(0).map((p) => p.close()));
  });
  const closeAfter = <T extends Etcd3>(client: T): T => {
    clients.push(client);
    return client;
  };
  const plain = (hosts: string | string[]) =>
    closeAfter(new Etcd3({ hosts, grpcOptions: { 'grpc.use_local_subchannel_pool': 1 } }));
  const proxy = async (): Promise<FaultProxy> => {
    const p = await FaultProxy.start(etcd().endpoints[0]!);
    proxies.push(p);
    return p;
  };
  /** A plain client through a new proxy. */
  const plainViaProxy = async (): Promise<{ proxy: FaultProxy; client: Etcd3 }> => {
    const p = await proxy();
    return { proxy: p, client: plain(p.endpoint) };
  };
  return { proxy, plain, plainViaProxy, closeAfter };
}

/** Every key under `prefix` (empty prefix: the whole keyspace), as strings. */
export async function keysUnder(client: Namespace, prefix = ''): Promise<string[]> {
  const kvs = prefix ? await client.getAll().prefix(prefix).keys() : await client.getAll().keys();
  return kvs.sort();
}

/**
 * Resolves with `check()`'s first defined result, re-checking on every event
 * under `key` (or every key starting with it). The watch is our own watch
 * stream (core/watch-hub), opened before the first check, so no change
 * between a check and the watch is missed; bounded by `timeoutMs`. (etcd3's
 * Watcher resets the client's gRPC channels when its last watcher is
 * cancelled, which would disturb the code under test on the same client.)
 */
export async function waitUntil<T>(
  client: Namespace,
  key: string,
  prefix: boolean,
  check: () => Promise<T | undefined>,
  timeoutMs: number,
  what: string,
): Promise<T> {
  let wake: () => void = () => {};
  const handle = await openWatch(
    client,
    { key: Buffer.from(key), prefix },
    { onEvents: () => wake(), onEnd: () => wake() },
  );
  const deadline = performance.now() + timeoutMs;
  try {
    for (;;) {
      const changed = new Promise<void>((resolve) => {
        wake = resolve;
      });
      const found = await check();
      if (found !== undefined) return found;
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`${what} after ${timeoutMs} ms`);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        changed,
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, left);
        }),
      ]);
      clearTimeout(timer);
    }
  } finally {
    handle.close();
  }
}

/** Resolves with the value once `key` exists. */
export function waitForKey(client: Namespace, key: string, timeoutMs = 20_000): Promise<string> {
  return waitUntil(
    client,
    key,
    false,
    async () => (await client.get(key).string()) ?? undefined,
    timeoutMs,
    `key ${key} did not appear`,
  );
}

/** Resolves once `key` is absent. */
export function waitForKeyGone(client: Namespace, key: string, timeoutMs = 20_000): Promise<void> {
  return waitUntil(
    client,
    key,
    false,
    async () => ((await client.get(key).string()) === null ? true : undefined),
    timeoutMs,
    `key ${key} still present`,
  ).then(() => undefined);
}

/** Resolves once at least `count` keys exist under `prefix`. */
export function waitForKeyCount(client: Namespace, prefix: string, count: number, timeoutMs = 20_000): Promise<void> {
  return waitUntil(
    client,
    prefix,
    true,
    async () => ((await client.getAll().prefix(prefix).count()) >= count ? true : undefined),
    timeoutMs,
    `fewer than ${count} keys under ${prefix}`,
  ).then(() => undefined);
}

/** Resolves once no key starts with `prefix`. */
export function waitForPrefixEmpty(client: Namespace, prefix: string, timeoutMs = 30_000): Promise<void> {
  return waitUntil(
    client,
    prefix,
    true,
    async () => ((await client.getAll().prefix(prefix).count()) === 0 ? true : undefined),
    timeoutMs,
    `keys still under ${prefix}`,
  ).then(() => undefined);
}

/** Rejects with a clear message if `promise` has not settled within `ms`. */
export async function within<T>(ms: number, promise: Promise<T>, what = 'operation'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** True if `promise` is still pending after the event loop has had `ms` to run. */
export async function stillPending(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false;
  promise.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
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
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
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
      return within(
        timeoutMs,
        Promise.race([
          new Promise<string>((resolve) => waiters.push({ re, resolve })),
          exited.then((code) => {
            throw new Error(`worker ${script} exited (${code}) before printing ${re}; stderr: ${stderr}`);
          }),
        ]),
        `worker ${script} line ${re}`,
      );
    },
    kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/** A message from a forked fixture. */
export type Message = { type: string; [k: string]: unknown };

/** A fixture in a child process, talking over IPC; `next` awaits the next message matching a predicate. */
export function forkFixture(script: string, args: string[]) {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const child: ChildProcess = fork(fileURLToPath(new URL(script, import.meta.url)), args, {
    cwd: root,
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const messages: Message[] = [];
  const waiters: { from: number; match: (m: Message) => boolean; resolve: (i: number) => void }[] = [];
  child.on('message', (m: Message) => {
    messages.push(m);
    for (const w of waiters.slice()) {
      if (w.match(m)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(messages.length - 1);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    messages,
    exited,
    /** Index of the first message at or after `from` matching `match`. */
    next(match: (m: Message) => boolean, from = 0, timeoutMs = 30_000): Promise<number> {
      const i = messages.findIndex((m, k) => k >= from && match(m));
      if (i >= 0) return Promise.resolve(i);
      return within(
        timeoutMs,
        Promise.race([
          new Promise<number>((resolve) => waiters.push({ from, match, resolve })),
          exited.then((code) => {
            throw new Error(`fixture exited (${code}); stderr: ${stderr}`);
          }),
        ]),
        'fixture message',
      );
    },
  };
}

/** Asserts that `fn` throws or rejects with INVALID_ARGUMENT (naming `argument`, when given). */
export function rejectsInvalid(fn: () => unknown, argument?: string): Promise<void> {
  const expected = argument === undefined ? { code: 'INVALID_ARGUMENT' } : { code: 'INVALID_ARGUMENT', argument };
  return expect(Promise.resolve().then(fn)).rejects.toMatchObject(expected);
}

/** Asserts that `make` rejects each malformed name (empty string, empty Buffer, number) with INVALID_ARGUMENT. */
export async function rejectsBadNames(make: (name: never) => unknown): Promise<void> {
  for (const name of ['', Buffer.alloc(0), 7]) await rejectsInvalid(() => make(name as never));
}
