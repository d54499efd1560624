/*
 * The public types of runSTM (docs/stm.md). Everything else in this folder is
 * internal: run.ts drives the attempts, attempt.ts is `tx`, reads.ts its read
 * set, commit.ts the commit Txn, isolation.ts what each level reads and
 * compares, lane.ts the requests that concurrent transactions share.
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
