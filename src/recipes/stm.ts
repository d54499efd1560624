import type { Namespace } from 'etcd3';
import { abortReason, delay, raceAbort } from '../core/abort.js';
import { traced } from '../core/diagnostics.js';
import { InvalidArgumentError, OutcomeUnknownError, STMConflictError } from '../core/errors.js';
import { showKey, toBuffer } from '../core/keys.js';
import { cmp, op, range, rangeAt, txn, type Compare, type KeyValue, type Op, type RangeOptions } from '../core/kv.js';
import { logger } from '../core/log.js';
import { isTransient, retrying } from '../core/retry.js';
import {
  checkClient,
  checkFunction,
  checkInteger,
  checkName,
  checkNumber,
  checkOptions,
  checkSignal,
  checkValue,
} from '../core/validate.js';

const log = logger('stm');

/*
 * Software transactional memory over etcd, with Go's clientv3/concurrency
 * semantics (stm.go): reads go to a read set, writes are buffered in a write
 * set, and one Txn commits the writes if compares chosen by the isolation
 * level still hold. Differences from Go, all on purpose: absent keys read as
 * undefined, retries are bounded and back off, an AbortSignal ends the call,
 * oversized transactions fail before they reach etcd, reads issued together
 * share one round trip, and a read-only attempt whose reads come from one
 * revision needs no commit Txn. docs/stm.md explains each of these.
 */

/**
 * Isolation levels, as in Go's `concurrency` package (same semantics, same
 * compares on the wire):
 *
 * - `'serializable-snapshot'` (default): reads come from one snapshot (the
 *   first read's revision); the commit fails if any key read changed, or if
 *   any key written (even one never read) changed after the snapshot.
 * - `'serializable'`: reads from one snapshot; the commit fails if any key
 *   read changed. Blind writes are not guarded.
 * - `'repeatable-reads'`: each read is a member-local read of the latest value
 *   (no common snapshot); the commit fails if any key read changed.
 * - `'read-committed'`: member-local reads, no compares: the commit always
 *   succeeds, so concurrent read-modify-writes lose updates.
 */
export type STMIsolation = 'serializable-snapshot' | 'serializable' | 'repeatable-reads' | 'read-committed';

const isolations: readonly STMIsolation[] = [
  'serializable-snapshot',
  'serializable',
  'repeatable-reads',
  'read-committed',
];

/** Jittered exponential backoff between retries, from the second retry on. */
export interface STMBackoff {
  /** Upper bound of the random wait before the second retry, in ms (default 5); it doubles per retry. */
  initialMs?: number;
  /** Cap of the upper bound, in ms (default 500). */
  maxMs?: number;
}

/** Options of {@link runSTM}. */
export interface STMOptions {
  /** Isolation level; default `'serializable-snapshot'`, as in Go. */
  isolation?: STMIsolation;
  /**
   * How many times `fn` may run again after a conflict (default 10, so at
   * most 11 attempts). When they run out, `runSTM` rejects with
   * `STMConflictError` (code `STM_CONFLICT`).
   */
  retries?: number;
  /**
   * Keys read in one round trip at the start of every attempt (Go's
   * `WithPrefetch`). They join the read set, so they are guarded by the
   * commit's compares like any key `fn` reads.
   */
  prefetch?: readonly (string | Buffer)[];
  /**
   * Ends the call: checked before each attempt and before the commit, and it
   * interrupts reads in flight and the wait between retries. A commit already
   * sent is awaited, so an aborted call never committed.
   */
  signal?: AbortSignal;
  /**
   * The most operations etcd accepts in one Txn branch (etcd's
   * `--max-txn-ops`, default 128). A transaction whose commit would need more
   * fails as soon as `fn` reads or writes one key too many, with
   * `INVALID_ARGUMENT`. Raise it only together with the server's flag.
   */
  maxTxnOps?: number;
  /** Backoff between retries (the first retry runs at once). */
  backoff?: STMBackoff;
}

/**
 * What `fn` receives: reads join the read set, writes are buffered until the
 * commit. A read of a key written earlier in the same attempt returns the
 * buffered value (read-your-writes); a deleted key reads as `undefined`.
 * Reads issued together (e.g. under `Promise.all`) go to etcd in one request.
 */
export interface STMTransaction {
  /** 1 for the first run of `fn`, 2 for the first retry, ... */
  readonly attempt: number;
  /** The isolation level of this transaction. */
  readonly isolation: STMIsolation;
  /** The value of `key` as UTF-8 text, or `undefined` if the key does not exist. */
  get(key: string | Buffer): Promise<string | undefined>;
  /** The value of `key` as bytes, or `undefined` if the key does not exist. */
  getBuffer(key: string | Buffer): Promise<Buffer | undefined>;
  /**
   * The value of `key` parsed as JSON, or `undefined` if the key does not
   * exist. The type parameter is not checked at run time.
   * @throws SyntaxError (rejecting `runSTM`) if the value is not valid JSON
   */
  getJSON<T = unknown>(key: string | Buffer): Promise<T | undefined>;
  /**
   * The mod revision of `key` as read by this transaction (0n if absent), as
   * Go's `STM.Rev`. Reads the key (adding it to the read set) if needed; it
   * ignores buffered writes.
   */
  rev(key: string | Buffer): Promise<bigint>;
  /**
   * Every key starting with `prefix`, sorted by key, with this attempt's
   * buffered writes applied (read-your-writes). Under every level but
   * `'read-committed'` the commit conflicts if any key under `prefix` was
   * added, changed or deleted after this read (docs/stm.md, "Ranges"). The
   * keys read join the read set; the whole range counts towards `maxTxnOps`
   * (one compare per key, plus one for the range).
   * @throws InvalidArgumentError (rejecting `runSTM`) if the range holds more keys than `maxTxnOps` allows
   */
  getRange(prefix: string | Buffer): Promise<STMRangeItem[]>;
  /** Buffers a put of `key`; the last write of a key in an attempt wins. */
  put(key: string | Buffer, value: string | Buffer): void;
  /** Buffers a put of `JSON.stringify(value)`. */
  putJSON(key: string | Buffer, value: unknown): void;
  /** Buffers a delete of `key` (a no-op at commit if the key is absent). */
  delete(key: string | Buffer): void;
}

/** One key of a range read, from {@link STMTransaction.getRange}. */
export interface STMRangeItem {
  /** The key (relative to the client's namespace), as UTF-8 text. */
  readonly key: string;
  /** The value as UTF-8 text. */
  readonly value: string;
  /** The key as bytes. */
  readonly keyBuffer: Buffer;
  /** The value as bytes. */
  readonly buffer: Buffer;
}

// ---------------------------------------------------------------------------

/** A range of the read set: every key under `prefix` as of revision `at`. */
interface RangeEntry {
  readonly prefix: Buffer;
  /** The revision the range was read at (the snapshot, or the read's header revision). */
  readonly at: bigint;
  /** The keys the read returned. */
  readonly kvs: KeyValue[];
}

/** One key of the read set. */
interface ReadEntry {
  readonly key: Buffer;
  readonly id: string;
  /** Settles when the read is done; rejects with the read's error. Always has a handler attached. */
  readonly done: Promise<void>;
  settled: boolean;
  error: unknown;
  /** The key-value read, or null when absent. */
  kv: KeyValue | null;
  /** The revision whose data this is (Go's header revision, or the pinned snapshot revision). */
  at: bigint;
}

/** One key of the write set: a put (value) or a delete (undefined). */
interface WriteEntry {
  readonly key: Buffer;
  readonly id: string;
  readonly value: Buffer | undefined;
}

/** Prefetched data from a failed commit's Else branch, for the next attempt. */
interface Prefetched {
  kv: KeyValue | null;
  at: bigint;
}

/** A read batch: keys requested in one synchronous run of `fn`, sent as one request. */
interface Batch {
  entries: ReadEntry[];
  /** Set when this batch is the attempt's first read: it defines the snapshot revision. */
  defineSnapshot?: { resolve(rev: bigint): void; reject(err: unknown): void };
}

/**
 * Internal: the attempt must start over without a conflict (its snapshot
 * revision was compacted, or a commit failed in transit and provably did not
 * apply). `cause` is the error behind it, surfaced if no attempt is left.
 */
class RestartAttempt extends Error {
  override name = 'RestartAttempt';
  constructor(
    message: string,
    readonly original: unknown,
  ) {
    super(message);
  }
}

/** What an attempt needs from the run it belongs to. */
interface AttemptHost {
  readonly isolation: STMIsolation;
  readonly snapshotLevel: boolean;
  readonly signal: AbortSignal | undefined;
  readonly maxTxnOps: number;
  prefetched: Map<string, Prefetched> | undefined;
  /** The revision of `prefetched` (the failed commit's). */
  prefetchedAt: bigint;
  readKeys(keys: Buffer[], opts: RangeOptions): Promise<{ kvs: (KeyValue | null)[]; revision: bigint }>;
  readRange(prefix: Buffer, opts: RangeOptions): Promise<{ kvs: KeyValue[]; more: boolean; revision: bigint }>;
}

/** Internal: a method of a finished attempt was called. */
function attemptOver(method: string): Error {
  return new Error(
    `STM: tx.${method}() called after this attempt ended (tx kept past fn, or called from code fn did not await)`,
  );
}

const idOf = (key: Buffer): string => key.toString('latin1');

const startsWith = (key: Buffer, prefix: Buffer): boolean =>
  key.length >= prefix.length && key.subarray(0, prefix.length).equals(prefix);

/**
 * Runs `fn` as a transaction on etcd and returns what `fn` returns.
 *
 * `fn` reads through `tx.get*` and writes through `tx.put*` / `tx.delete`;
 * the writes are committed in one etcd Txn, guarded by compares chosen by
 * the isolation level (Go's exact compares). On a conflict `fn` runs again
 * from scratch on fresh data, so **`fn` must be free of side effects** (no
 * writes outside `tx`, no messages sent, no counters bumped): it can run
 * several times, and only the last run's writes are committed.
 *
 * An error thrown by `fn` ends the call at once with that error; nothing of
 * that attempt is committed.
 *
 * @param client - an etcd3 client or namespace (keys are relative to its prefix)
 * @param fn - the transaction body
 * @param options - isolation, retries, prefetch, signal, maxTxnOps, backoff
 * @returns `fn`'s return value from the attempt that committed
 * @throws STMConflictError when the retries ran out (its `keys` name the keys whose compares failed last)
 * @throws InvalidArgumentError for bad arguments (before anything is sent), bad `tx` calls inside `fn`,
 *   or a transaction larger than `maxTxnOps`
 * @throws the signal's reason when `options.signal` aborts
 */
export async function runSTM<T>(
  client: Namespace,
  fn: (tx: STMTransaction) => T | PromiseLike<T>,
  options: STMOptions = {},
): Promise<T> {
  checkClient(client);
  checkFunction(fn, 'fn');
  checkOptions(options);
  const isolation = options.isolation ?? 'serializable-snapshot';
  if (!isolations.includes(isolation)) {
    throw new InvalidArgumentError(
      'options.isolation',
      `must be one of ${isolations.map((i) => `'${i}'`).join(', ')}, got ${JSON.stringify(isolation)}`,
    );
  }
  const retries = options.retries ?? 10;
  checkInteger(retries, 'options.retries', 0);
  const maxTxnOps = options.maxTxnOps ?? 128;
  checkInteger(maxTxnOps, 'options.maxTxnOps', 1);
  checkSignal(options.signal);
  checkOptions(options.backoff, 'options.backoff');
  const initialMs = options.backoff?.initialMs ?? 5;
  const maxMs = options.backoff?.maxMs ?? 500;
  // setTimeout's limit: longer waits would fire at once.
  checkNumber(initialMs, 'options.backoff.initialMs', 0, 2 ** 31 - 1);
  checkNumber(maxMs, 'options.backoff.maxMs', 0, 2 ** 31 - 1);
  const prefetch: Buffer[] = [];
  if (options.prefetch !== undefined) {
    if (!Array.isArray(options.prefetch)) {
      throw new InvalidArgumentError('options.prefetch', `must be an array of keys, got ${typeof options.prefetch}`);
    }
    const seen = new Set<string>();
    options.prefetch.forEach((k: unknown, i) => {
      checkName(k, `options.prefetch[${i}]`);
      const b = toBuffer(k);
      if (!seen.has(idOf(b))) prefetch.push(b);
      seen.add(idOf(b));
    });
    if (isolation !== 'read-committed' && prefetch.length > maxTxnOps) {
      throw new InvalidArgumentError(
        'options.prefetch',
        `has ${prefetch.length} keys; a transaction can read at most ${maxTxnOps} (options.maxTxnOps, etcd's --max-txn-ops)`,
      );
    }
  }
  options.signal?.throwIfAborted();
  const runner = new Runner<T>(client, fn, isolation, retries, maxTxnOps, prefetch, options.signal, initialMs, maxMs);
  return traced(
    'stm',
    () => ({ isolation, retries }),
    () => runner.run(),
    () => ({ attempts: runner.attempts }),
  );
}

/** The retry loop and everything that talks to etcd. */
class Runner<T> implements AttemptHost {
  /** Data from the last failed commit's Else branch (serializable levels), consumed by the next attempt. */
  prefetched: Map<string, Prefetched> | undefined;
  prefetchedAt = 0n;
  readonly snapshotLevel: boolean;
  /** Attempts started so far. */
  attempts = 0;

  constructor(
    readonly client: Namespace,
    readonly fn: (tx: STMTransaction) => T | PromiseLike<T>,
    readonly isolation: STMIsolation,
    readonly retries: number,
    readonly maxTxnOps: number,
    readonly prefetch: Buffer[],
    readonly signal: AbortSignal | undefined,
    readonly initialMs: number,
    readonly maxMs: number,
  ) {
    this.snapshotLevel = isolation === 'serializable-snapshot' || isolation === 'serializable';
  }

  async run(): Promise<T> {
    const { signal } = this;
    for (let attempt = 1; ; attempt++) {
      signal?.throwIfAborted();
      const tx = new Attempt(this, attempt);
      this.attempts = attempt;
      let outcome: { committed: true; value: T } | { committed: false; keys: string[] };
      try {
        outcome = await traced(
          'stmAttempt',
          () => ({ attempt, isolation: this.isolation }),
          () => this.#attempt(tx),
          (o) => ({ outcome: o.committed ? 'commit' : 'conflict', conflictKeys: o.committed ? [] : o.keys }),
        );
      } catch (err) {
        if (!(err instanceof RestartAttempt)) throw err;
        if (attempt > this.retries) throw err.original;
        log('attempt %d restarts: %s', attempt, err.message);
        this.prefetched = undefined;
        await this.#backoff(attempt + 1);
        continue;
      }
      if (outcome.committed) {
        if (attempt > 1) log('committed on attempt %d', attempt);
        return outcome.value;
      }
      if (attempt > this.retries) {
        log('giving up after %d attempts; conflicting keys %o', attempt, outcome.keys);
        throw new STMConflictError(outcome.keys, attempt);
      }
      log('attempt %d conflicted on %o', attempt, outcome.keys);
      // The first retry runs at once on the Else branch's fresh data (as Go
      // does); later ones back off, and then read afresh: data prefetched
      // before a wait is the likeliest to be stale again.
      if (attempt >= 2) {
        this.prefetched = undefined;
        await this.#backoff(attempt);
      }
    }
  }

  /** Full-jitter exponential backoff before attempt `attempt + 1`: up to initialMs · 2^(attempt-2), capped. */
  #backoff(attempt: number): Promise<void> {
    const cap = Math.min(this.maxMs, this.initialMs * 2 ** Math.max(0, attempt - 2));
    return delay(Math.random() * cap, this.signal);
  }

  async #attempt(tx: Attempt): Promise<{ committed: true; value: T } | { committed: false; keys: string[] }> {
    const { signal } = this;
    let value: T;
    try {
      for (const key of this.prefetch) tx.prefetchRead(key);
      value = await this.fn(tx);
    } catch (err) {
      tx.close();
      if (signal?.aborted) throw abortReason(signal);
      if (tx.failure !== undefined) throw tx.failure;
      throw err;
    }
    tx.close();
    await tx.settle();
    // A read failure that fn caught and ignored still fails the attempt.
    if (tx.failure !== undefined) throw tx.failure;
    signal?.throwIfAborted();
    tx.checkSize(0, 0);
    return this.#commit(tx, value);
  }

  /** Reads `keys` with `opts`: one Range for one key, else one read-only Txn per `maxTxnOps` keys. */
  async readKeys(keys: Buffer[], opts: RangeOptions): Promise<{ kvs: (KeyValue | null)[]; revision: bigint }> {
    const kvs: (KeyValue | null)[] = [];
    let revision = 0n;
    for (let i = 0; i < keys.length; i += this.maxTxnOps) {
      const chunk = keys.slice(i, i + this.maxTxnOps);
      const res = await retrying(() => this.#readChunk(chunk, opts), { signals: [this.signal] });
      kvs.push(...res.kvs);
      revision = revision === 0n || res.revision < revision ? res.revision : revision;
    }
    return { kvs, revision };
  }

  /** Reads every key under `prefix` with `opts` (a limit, when given, to detect an oversized range). */
  async readRange(prefix: Buffer, opts: RangeOptions): Promise<{ kvs: KeyValue[]; more: boolean; revision: bigint }> {
    const read = async (o: RangeOptions): Promise<{ kvs: KeyValue[]; more: boolean; revision: bigint }> => {
      try {
        const r = await range(this.client, prefix, { ...o, prefix: true });
        return { kvs: r.kvs, more: r.more, revision: r.revision };
      } catch (err) {
        const message = err instanceof Error ? err.message : '';
        if (o.serializable && o.revision !== undefined && /future revision/i.test(message))
          return read({ ...o, serializable: false });
        if (/has been compacted/i.test(message))
          throw new RestartAttempt(`snapshot revision ${o.revision} was compacted`, err);
        throw err;
      }
    };
    return retrying(() => read(opts), { signals: [this.signal] });
  }

  async #readChunk(keys: Buffer[], opts: RangeOptions): Promise<{ kvs: (KeyValue | null)[]; revision: bigint }> {
    try {
      if (keys.length === 1) {
        const r = await range(this.client, keys[0]!, opts);
        return { kvs: [r.kvs[0] ?? null], revision: r.revision };
      }
      const res = await txn(
        this.client,
        [],
        keys.map((k) => op.range(k, opts)),
      );
      return { kvs: keys.map((_, i) => rangeAt(res, i).kvs[0] ?? null), revision: res.revision };
    } catch (err) {
      const message = err instanceof Error ? err.message : '';
      // A member-local read at the snapshot revision reached a member that
      // has not applied it yet: read it linearizably, which waits for it.
      if (opts.serializable && opts.revision !== undefined && /future revision/i.test(message)) {
        return this.#readChunk(keys, { ...opts, serializable: false });
      }
      if (/has been compacted/i.test(message))
        throw new RestartAttempt(`snapshot revision ${opts.revision} was compacted`, err);
      throw err;
    }
  }

  /** The commit Txn, with Go's compares for the isolation level. */
  async #commit(tx: Attempt, value: T): Promise<{ committed: true; value: T } | { committed: false; keys: string[] }> {
    const level = this.isolation;
    const reads = [...tx.reads.values()];
    const ranges = [...tx.ranges.values()];
    const writes = [...tx.writes.values()];
    const seenAt = [...reads.map((r) => r.at), ...ranges.map((g) => g.at)];
    if (writes.length === 0) {
      // Nothing to write. A read set that is one snapshot (one revision,
      // first read linearizable) is already serializable: no Txn needed.
      // Go sends a compare-only Txn here; the outcome is the same.
      if (level === 'read-committed' || seenAt.length === 0) return { committed: true, value };
      if (this.snapshotLevel && seenAt.every((at) => at === seenAt[0])) return { committed: true, value };
    }
    const compares: Compare[] = [];
    const failure: Op[] = [];
    let first: bigint | undefined;
    if (level !== 'read-committed') {
      for (const r of reads) compares.push(cmp.mod(r.key, '==', r.kv ? r.kv.modRevision : 0n));
      // A range: no key under it modified (or created) after it was read. Deleted keys have no
      // mod revision left to compare: the per-key compares above (every key the range returned
      // is in the read set) catch those.
      for (const g of ranges) compares.push({ ...cmp.mod(g.prefix, '<', g.at + 1n), prefix: true });
    }
    const writeOnly = level === 'serializable-snapshot' ? writes.filter((w) => !tx.reads.has(w.id)) : [];
    if (level === 'serializable-snapshot' && seenAt.length > 0) {
      // Go: MOD(w) < first + 1 for every written key, read or not (blind writes).
      const snapshot = seenAt.reduce((min, at) => (at < min ? at : min), seenAt[0]!);
      first = snapshot;
      for (const w of writes) compares.push(cmp.mod(w.key, '<', snapshot + 1n));
    }
    if (this.snapshotLevel) {
      // Go's Else branch: re-read the read set, to prefetch the next attempt.
      for (const r of reads) failure.push(op.range(r.key));
      // Ours also reads the mod revisions of blind writes, to name the conflicting keys.
      for (const w of writeOnly) failure.push(op.range(w.key, { keysOnly: true }));
    } else if (level === 'repeatable-reads') {
      for (const r of reads) failure.push(op.range(r.key, { keysOnly: true }));
    }
    // Which ranges changed, to name them in STMConflictError: keys modified since each was read.
    const rangesAt = failure.length;
    if (level !== 'read-committed') {
      for (const g of ranges)
        failure.push(op.range(g.prefix, { prefix: true, minModRevision: g.at + 1n, countOnly: true }));
    }
    const success = writes.map((w) => (w.value === undefined ? op.delete(w.key) : op.put(w.key, w.value)));

    let res: Awaited<ReturnType<typeof txn>>;
    try {
      res = await txn(this.client, compares, success, failure);
    } catch (err) {
      if (!isTransient(err)) throw err;
      const message = (err as Error).message;
      // A read-only commit changes nothing either way: start over.
      if (writes.length === 0) throw new RestartAttempt(`read-only commit failed: ${message}`, err);
      // The commit's outcome is unknown. If a written key was provably last
      // modified before anything this attempt saw, our Txn did not apply:
      // start over. Otherwise surface the error (the Txn may have applied).
      if (await this.#provablyNotApplied(tx, writes)) {
        throw new RestartAttempt(`commit failed without applying: ${message}`, err);
      }
      log('commit outcome unknown: %s', message);
      throw new OutcomeUnknownError(
        `STM commit of ${writes.length} write(s): the Txn was sent and its reply lost (${message}); ` +
          'it may or may not have applied. Check your own state before running the transaction again.',
        { cause: err },
      );
    }
    if (res.succeeded) return { committed: true, value };

    // Conflict: find the compares that failed from the Else branch's reads.
    const keys: string[] = [];
    const prefetched = new Map<string, Prefetched>();
    if (failure.length > 0) {
      reads.forEach((r, i) => {
        const cur = rangeAt(res, i).kvs[0] ?? null;
        const mod = cur ? cur.modRevision : 0n;
        const stale = mod !== (r.kv ? r.kv.modRevision : 0n);
        const overwritten = first !== undefined && tx.writes.has(r.id) && mod >= first + 1n;
        if (stale || overwritten) keys.push(showKey(r.key));
        if (this.snapshotLevel) prefetched.set(r.id, { kv: cur, at: res.revision });
      });
      writeOnly.forEach((w, i) => {
        const cur = rangeAt(res, reads.length + i).kvs[0];
        if (first !== undefined && cur && cur.modRevision >= first + 1n) keys.push(showKey(w.key));
      });
      ranges.forEach((g, i) => {
        if (rangeAt(res, rangesAt + i).count > 0n) keys.push(`${showKey(g.prefix)}*`);
      });
    }
    if (this.snapshotLevel) {
      this.prefetched = prefetched;
      this.prefetchedAt = res.revision;
    }
    return { committed: false, keys };
  }

  /**
   * After a commit failed in transit: true if some written key was last
   * modified at or before the newest revision this attempt saw. Had our Txn
   * applied, that key's mod revision would be the Txn's (newer than anything
   * seen before it was sent) or 0 (deleted since), so it did not apply.
   */
  async #provablyNotApplied(tx: Attempt, writes: WriteEntry[]): Promise<boolean> {
    if (tx.maxSeen === 0n) return false;
    try {
      const { kvs } = await this.readKeys(
        writes.map((w) => w.key),
        { keysOnly: true },
      );
      return kvs.some((kv) => kv !== null && kv.modRevision > 0n && kv.modRevision <= tx.maxSeen);
    } catch {
      return false;
    }
  }
}

/** One run of `fn`: its read set, write set and read batching. */
class Attempt implements STMTransaction {
  readonly attempt: number;
  readonly isolation: STMIsolation;
  readonly reads = new Map<string, ReadEntry>();
  readonly writes = new Map<string, WriteEntry>();
  /** Ranges read, by prefix; each is read once per attempt. */
  readonly ranges = new Map<string, RangeEntry>();
  readonly #rangeReads = new Map<string, Promise<RangeEntry>>();
  /** The first read failure of this attempt (fails the attempt even if fn caught it). */
  failure: unknown;
  /** The newest header revision any read of this attempt returned. */
  maxSeen = 0n;
  readonly #run: AttemptHost;
  #batch: Batch | undefined;
  #flushes: Promise<void>[] = [];
  /** The snapshot revision (serializable levels), once the first read is under way. */
  #snapshot: Promise<bigint> | undefined;
  #closed = false;

  constructor(run: AttemptHost, attempt: number) {
    this.#run = run;
    this.attempt = attempt;
    this.isolation = run.isolation;
    // After a conflict the Else branch's revision is this attempt's snapshot,
    // also for keys the failed attempt did not read (Go would read those at
    // a newer revision and so mix two snapshots in one attempt).
    if (run.snapshotLevel && run.prefetched) this.#snapshot = Promise.resolve(run.prefetchedAt);
  }

  async get(key: string | Buffer): Promise<string | undefined> {
    return (await this.#value(key, 'get'))?.toString('utf8');
  }

  getBuffer(key: string | Buffer): Promise<Buffer | undefined> {
    return this.#value(key, 'getBuffer');
  }

  async getJSON<J = unknown>(key: string | Buffer): Promise<J | undefined> {
    const value = await this.#value(key, 'getJSON');
    if (value === undefined) return undefined;
    try {
      return JSON.parse(value.toString('utf8')) as J;
    } catch (err) {
      throw new SyntaxError(`STM: the value of ${showKey(toBuffer(key))} is not valid JSON: ${(err as Error).message}`);
    }
  }

  async rev(key: string | Buffer): Promise<bigint> {
    this.#assertOpen('rev');
    checkName(key, 'key');
    const entry = await this.#readEntry(toBuffer(key));
    return entry.kv ? entry.kv.modRevision : 0n;
  }

  async getRange(prefix: string | Buffer): Promise<STMRangeItem[]> {
    this.#assertOpen('getRange');
    checkName(prefix, 'prefix');
    const p = toBuffer(prefix);
    const id = idOf(p);
    let reading = this.#rangeReads.get(id);
    if (!reading) {
      reading = this.#readRange(p);
      reading.catch(() => undefined);
      this.#rangeReads.set(id, reading);
      this.#flushes.push(
        reading.then(
          () => undefined,
          () => undefined,
        ),
      );
    }
    const entry = await raceAbort(reading, this.#run.signal);
    // The values this attempt relies on: the read set's (the same data under the snapshot
    // levels), then this attempt's own writes on top.
    const byKey = new Map<string, KeyValue>();
    for (const kv of entry.kvs) {
      const kid = idOf(kv.key);
      const read = this.reads.get(kid);
      const seen = read?.settled && read.error === undefined ? read.kv : kv;
      if (seen) byKey.set(kid, seen);
    }
    for (const w of this.writes.values()) {
      if (!startsWith(w.key, p)) continue;
      if (w.value === undefined) byKey.delete(w.id);
      else
        byKey.set(w.id, { key: w.key, value: w.value, createRevision: 0n, modRevision: 0n, version: 0n, lease: '0' });
    }
    return [...byKey.values()]
      .sort((a, b) => Buffer.compare(a.key, b.key))
      .map((kv) => ({
        key: kv.key.toString('utf8'),
        value: kv.value.toString('utf8'),
        keyBuffer: kv.key,
        buffer: Buffer.from(kv.value),
      }));
  }

  /**
   * Reads the range once for this attempt (at the snapshot under the
   * serializable levels; the first read of an attempt defines the snapshot)
   * and adds every key it returns to the read set.
   */
  async #readRange(prefix: Buffer): Promise<RangeEntry> {
    const run = this.#run;
    const guarded = run.isolation !== 'read-committed';
    if (guarded) this.checkSize(0, 0, 1);
    let opts: RangeOptions;
    let pinned: bigint | undefined;
    let defineSnapshot: { resolve(rev: bigint): void; reject(err: unknown): void } | undefined;
    if (!run.snapshotLevel) opts = { serializable: true };
    else if (!this.#snapshot) {
      this.#snapshot = new Promise<bigint>((res, rej) => {
        defineSnapshot = { resolve: res, reject: rej };
      });
      this.#snapshot.catch(() => undefined);
      opts = {};
    } else {
      pinned = await this.#snapshot;
      opts = { revision: pinned, serializable: true };
    }
    // One key more than can fit: enough to know the range is too large, without reading all of it.
    if (guarded) opts.limit = run.maxTxnOps + 1;
    let read: Awaited<ReturnType<AttemptHost['readRange']>>;
    try {
      read = await run.readRange(prefix, opts);
    } catch (err) {
      defineSnapshot?.reject(err);
      if (this.failure === undefined) this.failure = err;
      throw err;
    }
    defineSnapshot?.resolve(read.revision);
    if (read.revision > this.maxSeen) this.maxSeen = read.revision;
    const at = pinned ?? read.revision;
    const fresh = read.kvs.filter((kv) => !this.reads.has(idOf(kv.key)));
    if (guarded) {
      if (read.more) this.checkSize(run.maxTxnOps + 1, 0, 1);
      this.checkSize(fresh.length, 0, 1);
    }
    for (const kv of fresh) {
      const kid = idOf(kv.key);
      this.reads.set(kid, { key: kv.key, id: kid, done: Promise.resolve(), settled: true, error: undefined, kv, at });
    }
    const entry: RangeEntry = { prefix, at, kvs: read.kvs };
    this.ranges.set(idOf(prefix), entry);
    return entry;
  }

  put(key: string | Buffer, value: string | Buffer): void {
    this.#assertOpen('put');
    checkName(key, 'key');
    checkValue(value, 'value');
    this.#write(toBuffer(key), Buffer.from(toBuffer(value)));
  }

  putJSON(key: string | Buffer, value: unknown): void {
    this.#assertOpen('putJSON');
    checkName(key, 'key');
    let text: string | undefined;
    try {
      text = JSON.stringify(value);
    } catch (err) {
      throw new InvalidArgumentError('value', `must be JSON-serialisable: ${(err as Error).message}`);
    }
    if (text === undefined) throw new InvalidArgumentError('value', `must be JSON-serialisable, got ${typeof value}`);
    this.#write(toBuffer(key), Buffer.from(text, 'utf8'));
  }

  delete(key: string | Buffer): void {
    this.#assertOpen('delete');
    checkName(key, 'key');
    this.#write(toBuffer(key), undefined);
  }

  /** Starts a read of an `options.prefetch` key without waiting for it. */
  prefetchRead(key: Buffer): void {
    this.#readEntry(key).catch(() => undefined);
  }

  /** No more calls from fn are accepted. */
  close(): void {
    this.#closed = true;
  }

  /** Sends any batch not yet sent and waits until every read has settled. */
  async settle(): Promise<void> {
    if (this.#batch) this.#flush(this.#batch);
    await Promise.all(this.#flushes);
  }

  /**
   * Throws if the commit would need more than maxTxnOps operations in one Txn
   * branch after adding `reads` keys to the read set and `writes` to the write
   * set.
   */
  checkSize(reads: number, writes: number, ranges = 0): void {
    const run = this.#run;
    const R = this.reads.size + reads;
    const W = this.writes.size + writes;
    const G = this.ranges.size + ranges;
    let needed: number;
    switch (run.isolation) {
      case 'serializable-snapshot':
        // Compares: one per key read and per range, plus one per key
        // written (when anything was read); Then: the writes; Else: the
        // reads, blind writes and ranges.
        needed = R + G > 0 ? R + G + W : W;
        break;
      case 'serializable':
      case 'repeatable-reads':
        needed = Math.max(R + G, W);
        break;
      case 'read-committed':
        needed = W;
        break;
    }
    if (needed > run.maxTxnOps) {
      throw new InvalidArgumentError(
        'fn',
        `this transaction would need ${needed} operations in one etcd Txn ` +
          `(${R} keys read${G ? ` (${G} range(s))` : ''}, ${W} written, isolation '${run.isolation}'), more than maxTxnOps = ${run.maxTxnOps} ` +
          "(etcd's --max-txn-ops, default 128); split it into smaller transactions, or raise both limits",
      );
    }
  }

  #assertOpen(method: string): void {
    if (this.#closed) throw attemptOver(method);
  }

  #write(key: Buffer, value: Buffer | undefined): void {
    const id = idOf(key);
    if (!this.writes.has(id)) this.checkSize(0, 1);
    this.writes.delete(id); // keep the last write's position
    this.writes.set(id, { key, id, value });
  }

  async #value(key: string | Buffer, method: string): Promise<Buffer | undefined> {
    this.#assertOpen(method);
    checkName(key, 'key');
    const k = toBuffer(key);
    const written = this.writes.get(idOf(k));
    if (written) return written.value && Buffer.from(written.value); // read-your-writes
    const entry = await this.#readEntry(k);
    return entry.kv ? entry.kv.value : undefined;
  }

  /** The read-set entry of `key`, reading it if needed; rejects with the read's error or the signal's reason. */
  async #readEntry(key: Buffer): Promise<ReadEntry> {
    const id = idOf(key);
    let entry = this.reads.get(id);
    if (!entry) {
      if (this.#run.isolation !== 'read-committed') this.checkSize(1, 0);
      entry = this.#startRead(key, id);
    }
    if (!entry.settled) await raceAbort(entry.done, this.#run.signal);
    else this.#run.signal?.throwIfAborted();
    if (entry.error !== undefined) throw entry.error;
    return entry;
  }

  #startRead(key: Buffer, id: string): ReadEntry {
    const run = this.#run;
    const pre = run.prefetched?.get(id);
    if (pre) {
      // Served from the last failed commit's Else branch (Go's prefetch).
      run.prefetched!.delete(id);
      const entry: ReadEntry = {
        key,
        id,
        done: Promise.resolve(),
        settled: true,
        error: undefined,
        kv: pre.kv,
        at: pre.at,
      };
      if (pre.at > this.maxSeen) this.maxSeen = pre.at;
      this.reads.set(id, entry);
      return entry;
    }
    let resolve!: () => void;
    let reject!: (err: unknown) => void;
    const done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => undefined);
    const entry: ReadEntry & { resolve(): void; reject(err: unknown): void } = {
      key,
      id,
      done,
      settled: false,
      error: undefined,
      kv: null,
      at: 0n,
      resolve,
      reject,
    };
    this.reads.set(id, entry);
    if (!this.#batch) {
      const batch: Batch = { entries: [] };
      if (run.snapshotLevel && !this.#snapshot) {
        // This batch is the first read: its revision becomes the snapshot.
        this.#snapshot = new Promise<bigint>((res, rej) => {
          batch.defineSnapshot = { resolve: res, reject: rej };
        });
        this.#snapshot.catch(() => undefined);
      }
      this.#batch = batch;
      queueMicrotask(() => this.#flush(batch));
    }
    this.#batch.entries.push(entry);
    return entry;
  }

  #flush(batch: Batch): void {
    if (this.#batch !== batch) return; // already sent
    this.#batch = undefined;
    this.#flushes.push(this.#send(batch));
  }

  async #send(batch: Batch): Promise<void> {
    const run = this.#run;
    const entries = batch.entries as (ReadEntry & { resolve(): void; reject(err: unknown): void })[];
    try {
      // Go's read options: serializable levels read the first batch
      // linearizably and pin later reads to its revision (member-local);
      // the other levels read member-local, unpinned.
      let opts: RangeOptions;
      let pinned: bigint | undefined;
      if (!run.snapshotLevel) opts = { serializable: true };
      else if (batch.defineSnapshot) opts = {};
      else {
        pinned = await this.#snapshot!;
        opts = { revision: pinned, serializable: true };
      }
      const { kvs, revision } = await run.readKeys(
        entries.map((e) => e.key),
        opts,
      );
      if (revision > this.maxSeen) this.maxSeen = revision;
      batch.defineSnapshot?.resolve(revision);
      entries.forEach((e, i) => {
        e.kv = kvs[i] ?? null;
        e.at = pinned ?? revision;
        e.settled = true;
        e.resolve();
      });
    } catch (err) {
      batch.defineSnapshot?.reject(err);
      if (this.failure === undefined) this.failure = err;
      for (const e of entries) {
        e.error = err;
        e.settled = true;
        e.reject(err);
      }
    }
  }
}
