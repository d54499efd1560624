import type { Namespace } from 'etcd3';
import { joinKey, showKey } from '../core/keys.js';
import { checkInspectArgs, readLine, SnapshotReader, type InspectedKey, type InspectOptions } from './read.js';

/*
 * Who holds a lock and who waits, from the keys alone: the same layouts the
 * recipes write (docs/mutex.md, rwmutex.md, semaphore.md), so Go processes
 * and `etcdctl lock` show up too.
 */

/** What {@link inspectLock} reports. */
export interface LockInspection {
  /** The lock's name, as given. */
  readonly name: string;
  /** The store revision the keys were read at. */
  readonly revision: bigint;
  /** The holder (the key with the lowest create revision under `<name>/`), alone in the array, or empty when free. */
  readonly holders: InspectedKey[];
  /** The waiters, first in line first. */
  readonly waiters: InspectedKey[];
  /** Keys under `<name>/` in all (holder included), even past the limit. */
  readonly total: number;
  /** True if more waiters exist than `options.limit` allowed to list. */
  readonly truncated: boolean;
}

/**
 * The holder and the ordered waiters of a {@link Mutex} (Go's
 * `concurrency.Mutex`, `etcdctl lock`): every key under `<name>/` by create
 * revision, the first one holding. Each comes with its lease (decimal and
 * hex: a Mutex key ends in its lease's hex) and the lease's remaining TTL.
 * Read-only: ranges and lease TTL lookups.
 * @param name - the lock's name, as given to `new Mutex(session, name)` or `etcdctl lock <name>`
 * @throws InvalidArgumentError for a bad client, name or options
 */
export async function inspectLock(
  client: Namespace,
  name: string | Buffer,
  options: InspectOptions = {},
): Promise<LockInspection> {
  const { id, keys, total, truncated } = await readLine(client, name, options);
  return { ...id, holders: keys.slice(0, 1), waiters: keys.slice(1), total, truncated };
}

/** What {@link inspectSemaphore} reports. */
export interface SemaphoreInspection {
  /** The semaphore's name, as given. */
  readonly name: string;
  /** The store revision the keys were read at. */
  readonly revision: bigint;
  /**
   * The permit count stored in `<name>/permits`, or `undefined` if that key
   * is missing (then nobody can tell holders from waiters, and every key is
   * listed as a waiter).
   */
  readonly permits: number | undefined;
  /** The permit holders: the first `permits` keys under `<name>/queue/` by create revision. */
  readonly holders: InspectedKey[];
  /** The waiters, first in line first. */
  readonly waiters: InspectedKey[];
  /** Keys under `<name>/queue/` in all. */
  readonly total: number;
  /** True if more keys exist than `options.limit` allowed to list. */
  readonly truncated: boolean;
}

/**
 * The permit holders and the ordered waiters of a {@link Semaphore}: keys
 * under `<name>/queue/` by create revision, the first `<name>/permits` of
 * them holding. Read-only.
 * @throws InvalidArgumentError for a bad client, name or options
 */
export async function inspectSemaphore(
  client: Namespace,
  name: string | Buffer,
  options: InspectOptions = {},
): Promise<SemaphoreInspection> {
  const { reader, id, keys, total, truncated } = await readLine(client, name, options, 'queue/');
  // Same snapshot: the reader is pinned to the line's revision.
  const stored = (await reader.range(joinKey(name, '/permits'))).kvs[0];
  const parsed = stored ? Number(stored.value.toString()) : NaN;
  const permits = Number.isInteger(parsed) && parsed > 0 ? parsed : undefined;
  const held = permits ?? 0;
  return { ...id, permits, holders: keys.slice(0, held), waiters: keys.slice(held), total, truncated };
}

/** A key of an {@link RWMutex}: a reader's or a writer's. */
export interface RWLockKey extends InspectedKey {
  /** `'read'` for `<name>/read/...`, `'write'` for `<name>/write/...`. */
  readonly mode: 'read' | 'write';
}

/** What {@link inspectRWMutex} reports. */
export interface RWMutexInspection {
  /** The lock's name, as given. */
  readonly name: string;
  /** The store revision the keys were read at. */
  readonly revision: bigint;
  /** The holders: one writer, or every reader older than the oldest writer. */
  readonly holders: RWLockKey[];
  /** The waiters, first in line first (readers and writers in one line). */
  readonly waiters: RWLockKey[];
  /** Reader and writer keys in all. */
  readonly total: number;
  /** True if more keys exist than `options.limit` allowed to list (per side). */
  readonly truncated: boolean;
}

/**
 * The holders and the ordered waiters of an {@link RWMutex} (Go's
 * `recipe.RWMutex`): keys under `<name>/read/` and `<name>/write/` form one
 * line by create revision; a writer holds when it is first, a reader when
 * no writer is ahead of it. Read-only.
 * @throws InvalidArgumentError for a bad client, name or options
 */
export async function inspectRWMutex(
  client: Namespace,
  name: string | Buffer,
  options: InspectOptions = {},
): Promise<RWMutexInspection> {
  const limit = checkInspectArgs(client, name, options);
  const reader = new SnapshotReader(client, options.signal);
  const reads = await reader.list(joinKey(name, '/read/'), limit);
  const writes = await reader.list(joinKey(name, '/write/'), limit);
  const tagged = [
    ...reads.kvs.map((kv) => ({ kv, mode: 'read' as const })),
    ...writes.kvs.map((kv) => ({ kv, mode: 'write' as const })),
  ].sort((a, b) =>
    a.kv.createRevision < b.kv.createRevision ? -1 : a.kv.createRevision > b.kv.createRevision ? 1 : 0,
  );
  const described = await reader.describe(tagged.map((t) => t.kv));
  const line: RWLockKey[] = described.map((k, i) => ({ ...k, mode: tagged[i]!.mode }));
  const firstWriter = line.findIndex((k) => k.mode === 'write');
  const held = firstWriter === 0 ? 1 : firstWriter < 0 ? line.length : firstWriter;
  return {
    name: showKey(name),
    revision: reader.revision,
    holders: line.slice(0, held),
    waiters: line.slice(held),
    total: reads.total + writes.total,
    truncated: reads.truncated || writes.truncated,
  };
}
