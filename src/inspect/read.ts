import type { Namespace } from 'etcd3';
import { raceAbort } from '../core/abort.js';
import { joinKey, leaseHex, showKey } from '../core/keys.js';
import { InternalError } from '../core/errors.js';
import { range, type KeyValue, type RangeOptions, type RangeResult } from '../core/kv.js';
import { retrying } from '../core/retry.js';
import { checkClient, checkInteger, checkName, checkWaitOptions } from '../core/validate.js';

/*
 * The one read path of every inspection: ranges only (never a Txn, never a
 * write), all pinned to the revision of the first one so that one inspection
 * is one consistent picture, plus the remaining TTL of each lease seen.
 */

/** Options every inspection takes. */
export interface InspectOptions {
  /** Abort the reads; the call then rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Most keys read per list (holders and waiters, items, jobs...), 1 to
   * 100 000; default 1000. Totals are always exact; lists past the limit are
   * cut and flagged `truncated`.
   */
  limit?: number;
}

/** One key of a recipe, as an inspection reports it. */
export interface InspectedKey {
  /** The key (UTF-8, or `0x<hex>` if it is not valid UTF-8), without the client's namespace. */
  readonly key: string;
  /** The key's lease ID in decimal, as etcd3 and `etcdctl -w json` print it; `'0'` when none. */
  readonly lease: string;
  /**
   * The same lease ID in lowercase hex, as Go, `etcdctl lease` and the Mutex/Election key suffix
   * print it; `'0'` when none.
   */
  readonly leaseHex: string;
  /**
   * The lease's remaining time to live in seconds, read right after the
   * keys; `-1` if the lease expired in between; `undefined` for a key
   * without a lease.
   */
  readonly leaseTtl: number | undefined;
  /** The key's create revision: its place in line, and the holder's fencing token. */
  readonly createRevision: bigint;
  /** The revision of the key's last write. */
  readonly modRevision: bigint;
}

/** @internal Default and bounds of {@link InspectOptions.limit}. */
const DEFAULT_LIMIT = 1000;
const MAX_LIMIT = 100_000;
/** Lease TTL lookups in flight at once (etcd has no batch call for them). */
const TTL_CONCURRENCY = 16;

/** @internal Checks the common arguments of an inspection; returns the limit. */
export function checkInspectArgs(
  client: unknown,
  name: unknown,
  options: InspectOptions | undefined,
  nameArgument = 'name',
): number {
  checkClient(client);
  checkName(name, nameArgument);
  checkWaitOptions(options);
  if (options?.limit !== undefined) checkInteger(options.limit, 'options.limit', 1, MAX_LIMIT);
  return options?.limit ?? DEFAULT_LIMIT;
}

/** @internal A list read under a prefix: the keys (up to the limit), the exact total and whether it was cut. */
export interface Listing {
  kvs: KeyValue[];
  total: number;
  truncated: boolean;
}

/**
 * @internal Reads for one inspection: ranges pinned to one revision, and
 * lease TTLs looked up once per lease.
 */
export class SnapshotReader {
  readonly client: Namespace;
  readonly signal: AbortSignal | undefined;
  #revision: bigint | undefined;
  readonly #ttls = new Map<string, Promise<number>>();

  constructor(client: Namespace, signal: AbortSignal | undefined) {
    this.client = client;
    this.signal = signal;
  }

  /** The store revision every read of this reader sees (set by the first read). */
  get revision(): bigint {
    if (this.#revision === undefined) throw new InternalError('inspection: no read made yet');
    return this.#revision;
  }

  /** One range, at the pinned revision (the first one is linearizable and pins it). */
  async range(key: Buffer, options: RangeOptions = {}): Promise<RangeResult> {
    const pinned = this.#revision;
    const opts = pinned === undefined ? options : { ...options, revision: pinned };
    const res = await retrying(() => raceAbort(range(this.client, key, opts), this.signal), { signals: [this.signal] });
    if (this.#revision === undefined) this.#revision = res.revision;
    return res;
  }

  /** Keys under `prefix` (oldest create revision first by default), at most `limit`. */
  async list(prefix: Buffer, limit: number, options: RangeOptions = {}): Promise<Listing> {
    const r = await this.range(prefix, { prefix: true, sortTarget: 'Create', sortOrder: 'Ascend', limit, ...options });
    return { kvs: r.kvs, total: Number(r.count), truncated: r.more };
  }

  /** How many keys are under `prefix`. */
  async count(prefix: Buffer): Promise<number> {
    return Number((await this.range(prefix, { prefix: true, countOnly: true })).count);
  }

  /**
   * The remaining TTL of each lease (deduplicated, a bounded number of
   * lookups in flight): seconds, or -1 if the lease is gone.
   */
  async leaseTtls(leases: Iterable<string>): Promise<Map<string, number>> {
    const wanted = [...new Set(leases)].filter((l) => l !== '0');
    const ttls = await mapInChunks(wanted, TTL_CONCURRENCY, (id) => this.#ttl(id));
    return new Map(wanted.map((id, i) => [id, ttls[i]!]));
  }

  #ttl(id: string): Promise<number> {
    let p = this.#ttls.get(id);
    if (!p) {
      p = retrying(() => raceAbort(this.client.leaseClient.leaseTimeToLive({ ID: id }), this.signal), {
        signals: [this.signal],
      }).then((r) => Number(r.TTL));
      this.#ttls.set(id, p);
    }
    return p;
  }

  /** {@link InspectedKey}s for `kvs`, with their leases' TTLs. */
  async describe(kvs: KeyValue[]): Promise<InspectedKey[]> {
    const ttls = await this.leaseTtls(kvs.map((kv) => kv.lease));
    return kvs.map((kv) => describeKey(kv, ttls));
  }

  /** {@link list}, with each key described (see {@link describe}). */
  async describedList(prefix: Buffer, limit: number): Promise<Listing & { keys: InspectedKey[] }> {
    const list = await this.list(prefix, limit);
    return { ...list, keys: await this.describe(list.kvs) };
  }
}

/** @internal One line of keys, read for an inspection by {@link readLine}. */
export interface LineRead extends Listing {
  /** The reader, pinned to the line's revision, for further reads of the same snapshot. */
  reader: SnapshotReader;
  /** What every report starts with: the name as shown, and the revision read at. */
  id: { name: string; revision: bigint };
  /** The keys, described, oldest create revision first. */
  keys: InspectedKey[];
}

/**
 * @internal Checks an inspection's arguments, then reads the line of keys
 * under `<name>/<dir>` (oldest create revision first) with their leases.
 */
export async function readLine(
  client: Namespace,
  name: string | Buffer,
  options: InspectOptions,
  dir = '',
): Promise<LineRead> {
  const limit = checkInspectArgs(client, name, options);
  const reader = new SnapshotReader(client, options.signal);
  const list = await reader.describedList(joinKey(name, '/', dir), limit);
  return { ...list, reader, id: { name: showKey(name), revision: reader.revision } };
}

/** @internal An {@link InspectedKey} from a key-value and the TTLs of its lease. */
export function describeKey(kv: KeyValue, ttls: ReadonlyMap<string, number>): InspectedKey {
  const hasLease = kv.lease !== '0';
  return {
    key: showKey(kv.key),
    lease: kv.lease,
    leaseHex: hasLease ? leaseHex(kv.lease) : '0',
    leaseTtl: hasLease ? (ttls.get(kv.lease) ?? -1) : undefined,
    createRevision: kv.createRevision,
    modRevision: kv.modRevision,
  };
}

/** @internal `fn` over `items`, `size` calls at a time (etcd has no batch read of leases or of many prefixes). */
export async function mapInChunks<T, R>(items: readonly T[], size: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += size) out.push(...(await Promise.all(items.slice(i, i + size).map(fn))));
  return out;
}
