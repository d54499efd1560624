import { raceAbort } from '../../core/abort.js';
import { isCompacted, isFutureRevision } from '../../core/etcd-errors.js';
import { type KeyValue, type RangeOptions, range } from '../../core/kv.js';
import { retrying } from '../../core/retry.js';
import { idOf, type STMConfig } from './config.js';
import { Lane } from './lane.js';

/** A key as an attempt read it: the key-value (null when absent) and the revision the data is from. */
export interface Read {
  readonly kv: KeyValue | null;
  readonly at: bigint;
}

/** What a failed commit's Else branch read, served to the next attempt (Go's prefetch), and its revision. */
export interface Prefetched {
  readonly reads: Map<string, Read>;
  readonly at: bigint;
}

/** A range read: every key under `prefix` as of revision `at`. */
export interface RangeRead {
  readonly prefix: Buffer;
  readonly at: bigint;
  readonly kvs: KeyValue[];
}

interface KeyEntry {
  readonly key: Buffer;
  readonly done: Promise<Read>;
  read?: Read;
}

/** Keys requested in one synchronous run of `fn`, read in one request once `send()` is called. */
interface Batch {
  readonly keys: Buffer[];
  readonly result: Promise<{ kvs: (KeyValue | null)[]; at: bigint }>;
  send(): void;
}

type DefineSnapshot = { resolve(revision: bigint): void; reject(err: unknown): void } | undefined;

/**
 * Internal: the attempt must start over without counting as a conflict (its
 * snapshot revision was compacted, or a commit failed in transit and provably
 * did not apply). `original` is the error behind it, surfaced if no attempt
 * is left.
 */
export class RestartAttempt extends Error {
  override name = 'RestartAttempt';
  constructor(
    message: string,
    readonly original: unknown,
  ) {
    super(message);
  }
}

/**
 * An attempt's read set. Each key is read at most once per attempt; keys
 * requested in one synchronous run of `fn` go out as one request, and under
 * the snapshot levels the first request's revision pins every later one.
 */
export class ReadSet {
  readonly keys = new Map<string, KeyEntry>();
  readonly ranges = new Map<string, RangeRead>();
  /** The first read failure (fails the attempt even if fn caught it). */
  failure: unknown;
  /** The newest header revision any read returned. */
  maxSeen = 0n;
  #batch: Batch | undefined;
  readonly #pending: Promise<unknown>[] = [];
  readonly #rangeReads = new Map<string, Promise<RangeRead>>();
  #snapshot: Promise<bigint> | undefined;

  constructor(
    private readonly config: STMConfig,
    private readonly prefetched: Prefetched | undefined,
    /** Throws if `reads` more keys and `ranges` more ranges would make the commit too large. */
    private readonly checkSize: (reads: number, ranges: number) => void,
  ) {
    // After a conflict the Else branch's revision is the snapshot, also for keys the failed attempt did not
    // read (Go would read those at a newer revision, mixing two snapshots in one attempt).
    if (config.policy.snapshot && prefetched) this.#snapshot = Promise.resolve(prefetched.at);
  }

  /** The read of `key`: from this read set, the prefetch, or etcd. */
  async key(key: Buffer): Promise<Read> {
    const id = idOf(key);
    let entry = this.keys.get(id);
    if (!entry) {
      if (this.config.policy.guardReads) this.checkSize(1, 0);
      entry = this.#start(key, id);
    }
    this.config.signal?.throwIfAborted();
    return entry.read ?? raceAbort(entry.done, this.config.signal);
  }

  /** The range under `prefix`, read once per attempt; its keys join the read set. */
  range(prefix: Buffer): Promise<RangeRead> {
    const id = idOf(prefix);
    let reading = this.#rangeReads.get(id);
    if (!reading) {
      reading = this.#readRange(prefix);
      this.#rangeReads.set(id, reading);
      this.#pending.push(reading.catch(() => undefined));
    }
    return raceAbort(reading, this.config.signal);
  }

  /** Sends the batch not yet sent and waits until every read has settled. */
  async settle(): Promise<void> {
    this.#batch?.send();
    await Promise.all(this.#pending);
  }

  #start(key: Buffer, id: string): KeyEntry {
    const pre = this.prefetched?.reads.get(id);
    let entry: KeyEntry;
    if (pre) {
      this.#seen(pre.at);
      entry = { key, done: Promise.resolve(pre), read: pre };
    } else {
      const batch = this.#batch ?? this.#newBatch();
      const i = batch.keys.push(key) - 1;
      const done = batch.result.then(({ kvs, at }) => (entry.read = { kv: kvs[i] ?? null, at }));
      done.catch(() => undefined);
      entry = { key, done };
    }
    this.keys.set(id, entry);
    return entry;
  }

  #newBatch(): Batch {
    const defines = this.#claimSnapshot();
    const keys: Buffer[] = [];
    let go!: () => void;
    const result = new Promise<void>((resolve) => {
      go = resolve;
    }).then(async () => {
      const { res, at } = await this.#at(defines, (opts) => readKeys(this.config, keys, opts));
      return { kvs: res.kvs, at };
    });
    this.#pending.push(result.catch(() => undefined));
    const batch: Batch = {
      keys,
      result,
      send: () => {
        if (this.#batch === batch) this.#batch = undefined;
        go();
      },
    };
    this.#batch = batch;
    queueMicrotask(batch.send);
    return batch;
  }

  async #readRange(prefix: Buffer): Promise<RangeRead> {
    const { policy, maxTxnOps, signal, client } = this.config;
    if (policy.guardReads) this.checkSize(0, 1);
    // One key more than can fit: enough to know the range is too large, without reading all of it.
    const limit = policy.guardReads ? maxTxnOps + 1 : undefined;
    const { res, at } = await this.#at(this.#claimSnapshot(), (opts) =>
      retrying(() => atSnapshot({ ...opts, prefix: true, limit }, (o) => range(client, prefix, o)), {
        signals: [signal],
      }),
    );
    const fresh = res.kvs.filter((kv) => !this.keys.has(idOf(kv.key)));
    if (policy.guardReads) this.checkSize(res.more ? maxTxnOps + 1 : fresh.length, 1);
    for (const kv of fresh) {
      const read = { kv, at };
      this.keys.set(idOf(kv.key), { key: kv.key, done: Promise.resolve(read), read });
    }
    const entry: RangeRead = { prefix, at, kvs: res.kvs };
    this.ranges.set(idOf(prefix), entry);
    return entry;
  }

  /**
   * Runs one read with the attempt's read options and returns it with the
   * revision its data is from; a read that defines the snapshot settles it.
   */
  async #at<T extends { revision: bigint }>(
    defines: DefineSnapshot,
    read: (opts: RangeOptions) => Promise<T>,
  ): Promise<{ res: T; at: bigint }> {
    try {
      const { opts, pinned } = await this.#options(defines);
      const res = await read(opts);
      defines?.resolve(res.revision);
      this.#seen(res.revision);
      return { res, at: pinned ?? res.revision };
    } catch (err) {
      defines?.reject(err);
      this.failure ??= err;
      throw err;
    }
  }

  /** Under the snapshot levels, the attempt's first read defines the snapshot: this returns its resolver. */
  #claimSnapshot(): DefineSnapshot {
    if (!this.config.policy.snapshot || this.#snapshot) return undefined;
    let defines: DefineSnapshot;
    this.#snapshot = new Promise<bigint>((resolve, reject) => {
      defines = { resolve, reject };
    });
    this.#snapshot.catch(() => undefined);
    return defines;
  }

  /**
   * Go's read options: under the snapshot levels the first read is
   * linearizable and later ones are member-local at its revision; the other
   * levels read member-local, unpinned.
   */
  async #options(defines: DefineSnapshot): Promise<{ opts: RangeOptions; pinned?: bigint }> {
    if (!this.config.policy.snapshot) return { opts: { serializable: true } };
    if (defines) return { opts: {} };
    const pinned = await this.#snapshot!;
    return { opts: { revision: pinned, serializable: true }, pinned };
  }

  #seen(revision: bigint): void {
    if (revision > this.maxSeen) this.maxSeen = revision;
  }
}

/** Reads `keys` with `opts`, `maxTxnOps` keys per request, retrying transient errors. */
export async function readKeys(
  config: STMConfig,
  keys: Buffer[],
  opts: RangeOptions,
): Promise<{ kvs: (KeyValue | null)[]; revision: bigint }> {
  const { client, maxTxnOps, signal } = config;
  const lane = Lane.of(client);
  const kvs: (KeyValue | null)[] = [];
  let revision = 0n;
  for (let i = 0; i < keys.length; i += maxTxnOps) {
    const chunk = keys.slice(i, i + maxTxnOps);
    const res = await retrying(() => atSnapshot(opts, (o) => lane.read(chunk, o, maxTxnOps)), { signals: [signal] });
    kvs.push(...res.kvs);
    if (revision === 0n || res.revision < revision) revision = res.revision;
  }
  return { kvs, revision };
}

/**
 * A read at a pinned revision: a member that has not applied it yet ("future
 * revision", a lagging follower) is asked again linearizably, which waits for
 * it; a compacted revision restarts the attempt.
 */
async function atSnapshot<T>(opts: RangeOptions, read: (opts: RangeOptions) => Promise<T>): Promise<T> {
  try {
    return await read(opts);
  } catch (err) {
    if (opts.serializable && opts.revision !== undefined && isFutureRevision(err)) {
      return atSnapshot({ ...opts, serializable: false }, read);
    }
    if (isCompacted(err)) {
      throw new RestartAttempt(`snapshot revision ${opts.revision} was compacted`, err);
    }
    throw err;
  }
}
