import { raceAbort } from '../../core/abort.js';
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

interface Deferred<T> {
  resolve(value: T): void;
  reject(err: unknown): void;
}

interface Batch {
  readonly keys: (Deferred<Read> & { key: Buffer; id: string })[];
  /** Set on the attempt's first read under a snapshot level: its revision becomes the snapshot. */
  readonly defines: Deferred<bigint> | undefined;
}

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
    if (entry.read) {
      this.config.signal?.throwIfAborted();
      return entry.read;
    }
    return raceAbort(entry.done, this.config.signal);
  }

  /** The range under `prefix`, read once per attempt; its keys join the read set. */
  range(prefix: Buffer): Promise<RangeRead> {
    const id = idOf(prefix);
    let reading = this.#rangeReads.get(id);
    if (!reading) {
      reading = this.#readRange(prefix);
      reading.catch(() => undefined);
      this.#rangeReads.set(id, reading);
      this.#pending.push(reading.catch(() => undefined));
    }
    return raceAbort(reading, this.config.signal);
  }

  /** Sends the batch not yet sent and waits until every read has settled. */
  async settle(): Promise<void> {
    if (this.#batch) this.#flush(this.#batch);
    await Promise.all(this.#pending);
  }

  #start(key: Buffer, id: string): KeyEntry {
    const pre = this.prefetched?.reads.get(id);
    if (pre) {
      this.#seen(pre.at);
      const served: KeyEntry = { key, done: Promise.resolve(pre), read: pre };
      this.keys.set(id, served);
      return served;
    }
    let deferred!: Deferred<Read>;
    const done = new Promise<Read>((resolve, reject) => {
      deferred = { resolve, reject };
    });
    done.catch(() => undefined);
    const entry: KeyEntry = { key, done };
    this.keys.set(id, entry);
    if (!this.#batch) {
      const batch: Batch = { keys: [], defines: this.#claimSnapshot() };
      this.#batch = batch;
      queueMicrotask(() => this.#flush(batch));
    }
    this.#batch.keys.push({ ...deferred, key, id });
    return entry;
  }

  #flush(batch: Batch): void {
    if (this.#batch !== batch) return; // already sent
    this.#batch = undefined;
    this.#pending.push(this.#send(batch));
  }

  async #send({ keys, defines }: Batch): Promise<void> {
    try {
      const { opts, pinned } = await this.#options(defines);
      const { kvs, revision } = await readKeys(
        this.config,
        keys.map((k) => k.key),
        opts,
      );
      defines?.resolve(revision);
      this.#seen(revision);
      keys.forEach((k, i) => {
        const read = { kv: kvs[i] ?? null, at: pinned ?? revision };
        this.keys.get(k.id)!.read = read;
        k.resolve(read);
      });
    } catch (err) {
      defines?.reject(err);
      this.failure ??= err;
      for (const k of keys) k.reject(err);
    }
  }

  async #readRange(prefix: Buffer): Promise<RangeRead> {
    const { policy, maxTxnOps, signal, client } = this.config;
    if (policy.guardReads) this.checkSize(0, 1);
    const defines = this.#claimSnapshot();
    let read: Awaited<ReturnType<typeof range>>;
    let pinned: bigint | undefined;
    try {
      const options = await this.#options(defines);
      pinned = options.pinned;
      // One key more than can fit: enough to know the range is too large, without reading all of it.
      const opts: RangeOptions = {
        ...options.opts,
        prefix: true,
        limit: policy.guardReads ? maxTxnOps + 1 : undefined,
      };
      read = await retrying(() => atSnapshot(opts, (o) => range(client, prefix, o)), { signals: [signal] });
    } catch (err) {
      defines?.reject(err);
      this.failure ??= err;
      throw err;
    }
    defines?.resolve(read.revision);
    this.#seen(read.revision);
    const at = pinned ?? read.revision;
    const fresh = read.kvs.filter((kv) => !this.keys.has(idOf(kv.key)));
    if (policy.guardReads) this.checkSize(read.more ? maxTxnOps + 1 : fresh.length, 1);
    for (const kv of fresh) {
      const r = { kv, at };
      this.keys.set(idOf(kv.key), { key: kv.key, done: Promise.resolve(r), read: r });
    }
    const entry: RangeRead = { prefix, at, kvs: read.kvs };
    this.ranges.set(idOf(prefix), entry);
    return entry;
  }

  /** Under the snapshot levels, the attempt's first read defines the snapshot: this returns its resolver. */
  #claimSnapshot(): Deferred<bigint> | undefined {
    if (!this.config.policy.snapshot || this.#snapshot) return undefined;
    let defines!: Deferred<bigint>;
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
  async #options(defines: Deferred<bigint> | undefined): Promise<{ opts: RangeOptions; pinned?: bigint }> {
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
    const message = err instanceof Error ? err.message : '';
    if (opts.serializable && opts.revision !== undefined && /future revision/i.test(message)) {
      return atSnapshot({ ...opts, serializable: false }, read);
    }
    if (/has been compacted/i.test(message)) {
      throw new RestartAttempt(`snapshot revision ${opts.revision} was compacted`, err);
    }
    throw err;
  }
}
