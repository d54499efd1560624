import type { Namespace } from 'etcd3';
import { InvalidArgumentError } from '../core/errors.js';
import { childPrefix, leaseHex, prefixEnd, toBuffer } from '../core/keys.js';
import { checkClient, checkInteger, checkWaitOptions } from '../core/validate.js';
import { inspectElection, type ElectionInspection } from './election.js';
import {
  inspectLock,
  inspectRWMutex,
  inspectSemaphore,
  type LockInspection,
  type RWMutexInspection,
  type SemaphoreInspection,
} from './locks.js';
import { inspectQueue, type QueueInspection } from './queue.js';
import { mapInChunks, SnapshotReader, type InspectOptions } from './read.js';
import { inspectServices, parseObject, type ServicesInspection } from './services.js';
import { inspectWorkQueue, type WorkQueueInspection } from './work-queue.js';

/*
 * Finding the recipes under a prefix from their key layouts alone (no
 * registry of names exists in etcd). The rules, first match wins, for each
 * key `K` (leaf = the part after the last `/`, dir = the part before):
 *
 *  1. `X/jobs|claims|attempts|dead/<5 digits>-<digits>`: work queue `X`
 *     (and then `X/waiters/...` is its claimers' line);
 *  2. `__X/waiters/...`: queue `X`; `__X/<5 digits>`:
 *     priority queue `X` (the bookkeeping of Queue and PriorityQueue);
 *  3. `X/read/<19 digits>` or `X/write/<19 digits>` with a lease: RWMutex `X`;
 *  4. `X/queue/<19 digits>` with a lease, or `X/permits`: semaphore `X`;
 *  5. `X/<5 digits>/<16 digits>` without a lease: priority queue `X`;
 *  6. `X/<19 digits>` without a lease: queue `X`;
 *  7. a leaf equal to the hex of the key's own lease: Go's Mutex/Election
 *     layout; `X` is an election if any of its keys has a non-empty value
 *     (a proposal), else a lock (`etcdctl lock` and Mutex write "");
 *  8. any other key with a lease: a service `<root><service>/<id>` if one
 *     of the keys under its dir holds an instance's JSON (`address` or Go's
 *     `Addr`).
 *
 * Anything else (barriers, STM data, application keys) is not shown. A queue
 * whose items and consumers are all gone leaves nothing to find; a priority
 * queue leaves its `__X/<%05d>` keys and stays visible.
 */

/** The recipe families inspection knows. */
export type RecipeKind =
  | 'lock'
  | 'election'
  | 'semaphore'
  | 'rwmutex'
  | 'queue'
  | 'priority-queue'
  | 'work-queue'
  | 'service';

/** A recipe found under a prefix. */
export interface DiscoveredRecipe {
  /** What the keys under `name` look like. */
  readonly kind: RecipeKind;
  /** The recipe's name (the service's name for `'service'`). */
  readonly name: string;
  /** For `'service'`: the registry root, e.g. `'services/'`. */
  readonly root?: string;
}

/** Options of {@link discoverRecipes}. */
export interface DiscoverOptions {
  /** Abort the reads. */
  signal?: AbortSignal;
  /** Most keys scanned (1 to 1 000 000, default 100 000); keys past it are not classified. */
  maxKeys?: number;
}

const PAGE = 5000;
const WQ = /^(.+)\/(jobs|claims|attempts|dead)\/[0-9]{5}-[0-9]+$/;
const WQ_WAITER = /^(.+)\/waiters\/[0-9]+$/;
const BOOK = /^__(.+)\/(?:(waiters)\/.*|([0-9]{5}))$/;
/** Receipts of proven writes (core/receipts.ts): bookkeeping, never a recipe of their own. */
const RECEIPT = /^(?:__.+\/(?:sent|taken|receipts)|.+\/receipts)\/[0-9]{19}$/;
const RW = /^(.+)\/(read|write)\/[0-9]{19}$/;
const SEM = /^(.+)\/(?:queue\/[0-9]{19}|(permits))$/;
const PQ = /^(.+)\/[0-9]{5}\/[0-9]{16}$/;
const Q = /^(.+)\/[0-9]{19}$/;

/**
 * The recipes whose keys live under `prefix` (`''`: the whole keyspace),
 * told apart by their key layouts (rules in the module's source and in
 * docs/observability.md). Read-only: key-only ranges, plus one small read of
 * values per candidate lock/election/service. Sorted by kind, then name.
 * @throws InvalidArgumentError for a bad client or options
 */
export async function discoverRecipes(
  client: Namespace,
  prefix: string,
  options: DiscoverOptions = {},
): Promise<DiscoveredRecipe[]> {
  checkClient(client);
  checkWaitOptions(options);
  if (typeof prefix !== 'string')
    throw new InvalidArgumentError('prefix', `must be a string ('' for the whole keyspace), got ${typeof prefix}`);
  if (options.maxKeys !== undefined) checkInteger(options.maxKeys, 'options.maxKeys', 1, 1_000_000);
  const maxKeys = options.maxKeys ?? 100_000;
  const reader = new SnapshotReader(client, options.signal);
  const found = new Map<string, DiscoveredRecipe>();
  const add = (kind: RecipeKind, name: string, root?: string) => {
    const id = `${kind}\0${root ?? ''}\0${name}`;
    if (!found.has(id)) found.set(id, root === undefined ? { kind, name } : { kind, name, root });
  };

  const keys: { key: string; lease: string }[] = [];
  const scan = async (from: string) => {
    const fromKey = toBuffer(from);
    // Pages end where the prefix ends. The whole keyspace of a namespaced client has no
    // namespace-relative end: read it in one page.
    const end = from ? prefixEnd(fromKey) : client.prefix.length ? undefined : Buffer.from([0]);
    // etcd rejects an empty key; the whole keyspace starts at \0.
    let start = fromKey.length || client.prefix.length ? fromKey : Buffer.from([0]);
    for (let seen = 0; seen < maxKeys; ) {
      const limit = Math.min(end ? PAGE : maxKeys, maxKeys - seen);
      const r = await reader.range(start, { ...(end ? { end } : { prefix: true }), limit, keysOnly: true });
      for (const kv of r.kvs) keys.push({ key: kv.key.toString(), lease: kv.lease });
      seen += r.kvs.length;
      if (!end || !r.more || r.kvs.length === 0) break;
      start = Buffer.concat([r.kvs[r.kvs.length - 1]!.key, Buffer.from([0])]);
    }
  };
  await scan(prefix);
  // Queue bookkeeping lives beside the prefix, under `__<prefix>`.
  if (prefix && !prefix.startsWith('__')) await scan(`__${prefix}`);

  const workQueues = new Set<string>();
  for (const { key } of keys) {
    const m = WQ.exec(key);
    if (m) workQueues.add(m[1]!);
  }
  for (const name of workQueues) add('work-queue', name);
  const hexDirs = new Set<string>();
  const serviceDirs = new Set<string>();
  const priorityQueues = new Set<string>();
  const queues = new Set<string>();
  for (const { key, lease } of keys) {
    const leased = lease !== '0';
    if (WQ.test(key) || RECEIPT.test(key)) continue;
    const waiter = WQ_WAITER.exec(key);
    if (waiter && workQueues.has(waiter[1]!)) continue;
    const book = BOOK.exec(key);
    if (book) {
      (book[3] ? priorityQueues : queues).add(book[1]!);
      continue;
    }
    const rw = RW.exec(key);
    if (rw && leased) {
      add('rwmutex', rw[1]!);
      continue;
    }
    const sem = SEM.exec(key);
    if (sem && (leased || sem[2])) {
      add('semaphore', sem[1]!);
      continue;
    }
    const pq = PQ.exec(key);
    if (pq && !leased) {
      priorityQueues.add(pq[1]!);
      continue;
    }
    const q = Q.exec(key);
    if (q && !leased) {
      queues.add(q[1]!);
      continue;
    }
    if (!leased) continue;
    const slash = key.lastIndexOf('/');
    if (slash <= 0) continue;
    const dir = key.slice(0, slash);
    if (key.slice(slash + 1) === leaseHex(lease)) hexDirs.add(dir);
    else serviceDirs.add(dir);
  }
  for (const name of priorityQueues) add('priority-queue', name);
  for (const name of queues) if (!priorityQueues.has(name)) add('queue', name);
  // A few small value reads per candidate directory, some at a time.
  const values = (dir: string, limit: number) =>
    reader.range(childPrefix(dir), { prefix: true, limit }).then((r) => r.kvs);
  const hex = [...hexDirs];
  (await mapInChunks(hex, 8, (dir) => values(dir, 100))).forEach((kvs, i) => {
    add(kvs.some((kv) => kv.value.length > 0) ? 'election' : 'lock', hex[i]!);
  });
  const svc = [...serviceDirs].filter((dir) => !hexDirs.has(dir));
  (await mapInChunks(svc, 8, (dir) => values(dir, 20))).forEach((kvs, i) => {
    const isInstance = kvs.some((kv) => {
      const o = parseObject(kv.value.toString());
      return typeof o?.address === 'string' || typeof o?.Addr === 'string';
    });
    if (!isInstance) return;
    const dir = svc[i]!;
    const slash = dir.lastIndexOf('/');
    add('service', dir.slice(slash + 1), dir.slice(0, slash + 1));
  });
  const order = 'lock rwmutex semaphore election queue priority-queue work-queue service'.split(' ');
  return [...found.values()].sort(
    (a, b) =>
      order.indexOf(a.kind) - order.indexOf(b.kind) ||
      (a.root ?? '').localeCompare(b.root ?? '') ||
      a.name.localeCompare(b.name),
  );
}

/** One recipe's inspection, tagged with its kind. */
export type RecipeInspection = {
  [K in RecipeKind]: {
    /** The recipe's kind. */
    readonly kind: K;
    /** What the inspection of that kind returns. */
    readonly inspection: {
      /** What {@link inspectLock} returns. */
      lock: LockInspection;
      /** What {@link inspectElection} returns. */
      election: ElectionInspection;
      /** What {@link inspectSemaphore} returns. */
      semaphore: SemaphoreInspection;
      /** What {@link inspectRWMutex} returns. */
      rwmutex: RWMutexInspection;
      /** What {@link inspectQueue} returns. */
      queue: QueueInspection;
      /** What {@link inspectQueue} returns. */
      'priority-queue': QueueInspection;
      /** What {@link inspectWorkQueue} returns. */
      'work-queue': WorkQueueInspection;
      /** What {@link inspectServices} returns. */
      service: ServicesInspection;
    }[K];
  };
}[RecipeKind];

type InspectionOf<K extends RecipeKind> = Extract<RecipeInspection, { kind: K }>['inspection'];

type Inspect<K extends RecipeKind> = (c: Namespace, r: DiscoveredRecipe, o: InspectOptions) => Promise<InspectionOf<K>>;

/** The inspection function of each kind. */
const INSPECT: { [K in RecipeKind]: Inspect<K> } = {
  lock: (c, r, o) => inspectLock(c, r.name, o),
  election: (c, r, o) => inspectElection(c, r.name, o),
  semaphore: (c, r, o) => inspectSemaphore(c, r.name, o),
  rwmutex: (c, r, o) => inspectRWMutex(c, r.name, o),
  queue: (c, r, o) => inspectQueue(c, r.name, { signal: o.signal, kind: 'queue' }),
  'priority-queue': (c, r, o) => inspectQueue(c, r.name, { signal: o.signal, kind: 'priority-queue' }),
  'work-queue': (c, r, o) => inspectWorkQueue(c, r.name, o),
  service: (c, r, o) => inspectServices(c, r.name, { ...o, root: r.root ?? '' }),
};

/** @internal Every {@link RecipeKind}, in the order `--kind` help lists them. */
export const RECIPE_KINDS = Object.keys(INSPECT) as readonly RecipeKind[];

/**
 * Inspects one discovered recipe with the inspection function of its kind.
 * @throws InvalidArgumentError for a kind that is not a {@link RecipeKind}, or bad options
 */
export async function inspectRecipe(
  client: Namespace,
  recipe: DiscoveredRecipe,
  options: InspectOptions = {},
): Promise<RecipeInspection> {
  const kind = recipe?.kind;
  if (!RECIPE_KINDS.includes(kind))
    throw new InvalidArgumentError('recipe.kind', `must be one of ${RECIPE_KINDS.join(', ')}, got ${String(kind)}`);
  return { kind, inspection: await INSPECT[kind](client, recipe, options) } as RecipeInspection;
}
