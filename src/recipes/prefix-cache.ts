import { EventEmitter } from 'node:events';
import type { Namespace } from 'etcd3';
import { delay, raceAbort } from '../core/abort.js';
import { AsyncQueue } from '../core/async-queue.js';
import { clientScope } from '../core/client.js';
import { publish } from '../core/diagnostics.js';
import { ClosedError } from '../core/errors.js';
import { isClientClosed } from '../core/etcd-errors.js';
import { emitSafely } from '../core/events.js';
import { showKey, toBuffer } from '../core/keys.js';
import type { KeyValue } from '../core/kv.js';
import { logger } from '../core/log.js';
import { retrying } from '../core/retry.js';
import { isTransient } from '../core/etcd-errors.js';
import { checkClient, checkInteger, checkName, checkOptions, checkWaitOptions } from '../core/validate.js';
import { openWatch, WatchCompactedError, type WatchEvent, type WatchHandle } from '../core/watch-hub.js';
import {
  type CachedKeyValue,
  change,
  listPrefix,
  makeEntry,
  mapKeyOf,
  snapshotDiff,
  snapshotEntries,
  mapKeyOfInput,
  mergeChanges,
  type PrefixCacheChange,
  type PrefixCacheEvents,
  type PrefixCacheOptions,
  type PrefixCacheWaitOptions,
} from './prefix-cache-snapshot.js';

export {
  CachedKeyValue,
  type PrefixCacheChange,
  type PrefixCacheEvents,
  type PrefixCacheOptions,
  type PrefixCacheResync,
  type PrefixCacheWaitOptions,
} from './prefix-cache-snapshot.js';

const log = logger('prefix-cache');

function closedError(): Error {
  return new DOMException('the PrefixCache was closed', 'AbortError');
}

/** A promise settled from outside; rejecting it makes no unhandled rejection by itself. */
function gate(): { promise: Promise<void>; resolve: () => void; reject: (err: unknown) => void } {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * A local, always-current copy of every key under a prefix: a watch from
 * "now", and a list at exactly the watch's creation revision.
 *
 * - Reconnects resume the watch after the last revision seen: no gap, no
 *   duplicate.
 * - When that revision has been compacted away, the cache lists the prefix
 *   again and emits the difference as `change` events (`resync: true`). It
 *   never ends because of an error; only `close()` (or closing the client)
 *   ends it.
 * - Values are strings (UTF-8); {@link CachedKeyValue.valueBuffer} gives the
 *   exact bytes.
 *
 * ```ts
 * const cache = new PrefixCache(client, 'config/');
 * await cache.ready();
 * cache.get('config/flags');               // string | undefined
 * cache.on('change', (c) => console.log(c.type, c.key, c.prevValue, '->', c.value));
 * for await (const change of cache) { ... } // coalesced per key for slow consumers
 * await cache.close();
 * ```
 */
export class PrefixCache
  extends EventEmitter<PrefixCacheEvents>
  implements AsyncIterable<PrefixCacheChange>, AsyncDisposable
{
  /** The etcd3 client (or namespace). */
  readonly client: Namespace;
  /** The prefix, as given. */
  readonly prefix: string | Buffer;

  readonly #prefix: Buffer;
  readonly #pageSize: number;
  #entries = new Map<string, CachedKeyValue>();
  #revision = 0n;
  #ready = false;
  /** Settled when ready; rejected (and replaced) when a first list fails for good, or on close. */
  #readyGate = gate();
  #watch: WatchHandle | undefined;
  /** Incremented with every list+watch cycle; stale watch callbacks compare against it. */
  #generation = 0;
  #syncing = false;
  #syncWanted: { compactRevision: bigint | undefined } | undefined;
  readonly #stop = new AbortController();
  readonly #streams = new Set<AsyncQueue<PrefixCacheChange>>();
  #closing: Promise<void> | undefined;
  readonly #disown: () => void;

  /**
   * Starts loading the prefix at once; `await ready()` before reading.
   * @param client - an etcd3 client or namespace
   * @param prefix - every key starting with it is cached (non-empty)
   * @param options - page size of the list
   * @throws InvalidArgumentError for a bad client, an empty prefix or bad options
   */
  constructor(client: Namespace, prefix: string | Buffer, options: PrefixCacheOptions = {}) {
    super();
    checkClient(client);
    checkName(prefix, 'prefix');
    checkOptions(options);
    const { pageSize = 1000 } = options;
    checkInteger(pageSize, 'options.pageSize', 1, 100_000);
    this.client = client;
    this.prefix = prefix;
    this.#prefix = toBuffer(prefix);
    this.#pageSize = pageSize;
    // Closing the client closes the cache; pending ready() calls then reject with CLOSED.
    this.#disown = clientScope(client).own({
      close: () => this.#close(new ClosedError(`PrefixCache ${showKey(this.#prefix)}: the etcd client was closed`)),
    });
    this.#requestSync(undefined);
  }

  /** True once the first list is loaded and the watch is live. */
  get isReady(): boolean {
    return this.#ready;
  }

  /** True once closed. */
  get closed(): boolean {
    return this.#stop.signal.aborted;
  }

  /**
   * The store revision the cache reflects: every change under the prefix up
   * to this revision has been applied (0n before ready). It moves with the
   * prefix's own changes, not with writes elsewhere in etcd.
   */
  get revision(): bigint {
    return this.#revision;
  }

  /** Number of keys cached. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Resolves once the first list is loaded and the watch is live. Rejects
   * with the signal's reason on abort, with an `AbortError` if the cache is
   * closed first, and with the error if loading fails with a non-transient
   * error (the cache keeps retrying; call `ready()` again to wait on).
   */
  ready(options: PrefixCacheWaitOptions = {}): Promise<void> {
    checkWaitOptions(options);
    if (this.#ready) return Promise.resolve();
    if (this.closed) return Promise.reject(closedError());
    return raceAbort(this.#readyGate.promise, options.signal);
  }

  /** The value of `key` (a full key, prefix included), or undefined. */
  get(key: string | Buffer): string | undefined {
    return this.#entries.get(mapKeyOfInput(key))?.value;
  }

  /** The cached key-value of `key` with its revisions and lease, or undefined. */
  getEntry(key: string | Buffer): CachedKeyValue | undefined {
    return this.#entries.get(mapKeyOfInput(key));
  }

  /** True if `key` is cached. */
  has(key: string | Buffer): boolean {
    return this.#entries.has(mapKeyOfInput(key));
  }

  /** Every `[key, value]` pair, sorted by key bytes as etcd sorts them (a snapshot). */
  entries(): [string, string][] {
    return this.#sortedEntries().map((e) => [e.key, e.value]);
  }

  /** Every cached key-value, sorted by key bytes (a snapshot). */
  values(): CachedKeyValue[] {
    return this.#sortedEntries();
  }

  /**
   * An async iterator of changes from now on, ending when the cache closes.
   * It never buffers without bound: while the consumer is busy, changes of
   * one key are merged into one (previous value of the first, new value of
   * the last, the latest revision; a key created and deleted in between
   * drops out), so at most one change per key is pending. The `change` event
   * reports every change as it happens.
   */
  changes(options: PrefixCacheWaitOptions = {}): AsyncIterableIterator<PrefixCacheChange> {
    checkWaitOptions(options);
    const stream = new AsyncQueue<PrefixCacheChange>({
      merge: mergeChanges,
      signal: options.signal,
      onEnd: () => this.#streams.delete(stream),
    });
    if (this.closed) stream.finish();
    else if (!stream.ended) this.#streams.add(stream);
    return stream;
  }

  /** `for await (const change of cache)`: see {@link PrefixCache.changes}. */
  [Symbol.asyncIterator](): AsyncIterableIterator<PrefixCacheChange> {
    return this.changes();
  }

  /** Stops the watch, ends the iterators and rejects pending `ready()` calls. Idempotent. */
  close(): Promise<void> {
    return this.#close(closedError());
  }

  #close(reason: Error): Promise<void> {
    this.#closing ??= (async () => {
      this.#stop.abort(reason);
      this.#disown();
      this.#generation++;
      this.#watch?.close();
      this.#watch = undefined;
      this.#readyGate.reject(reason);
      for (const s of [...this.#streams]) s.finish();
      this.#streams.clear();
      log('%s: closed', showKey(this.#prefix));
      this.emit('closed');
    })();
    return this.#closing;
  }

  /** `await using cache = new PrefixCache(...)` closes it at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // -------------------------------------------------------------------------

  #sortedEntries(): CachedKeyValue[] {
    // Map keys are latin1 strings, whose code units compare like the key bytes.
    return [...this.#entries].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map((e) => e[1]);
  }

  /** Asks for a list + watch cycle; runs it unless one is running (which then runs again). */
  #requestSync(compactRevision: bigint | undefined): void {
    if (this.closed) return;
    this.#syncWanted = { compactRevision };
    if (!this.#syncing) void this.#sync();
  }

  /** Watch from "now", then list at the watch's creation revision; retried until it works or the cache closes. */
  async #sync(): Promise<void> {
    this.#syncing = true;
    const signal = this.#stop.signal;
    try {
      while (this.#syncWanted && !signal.aborted) {
        const { compactRevision } = this.#syncWanted;
        this.#syncWanted = undefined;
        await retrying(() => this.#syncOnce(compactRevision, signal), {
          signals: [signal],
          maxElapsedMs: Infinity,
          retryIf: (err) => !isClientClosed(err),
          onRetry: (err) => this.#syncFailed(err as Error),
        });
      }
    } catch (err) {
      if (!signal.aborted && isClientClosed(err)) void this.close();
    } finally {
      this.#syncing = false;
    }
  }

  async #syncOnce(compactRevision: bigint | undefined, signal: AbortSignal): Promise<void> {
    // Watch first, from "now", and list at the watch's creation revision: a watch from a past revision
    // would pay etcd's 100 ms catch-up (docs/internals.md, 'Why a watch starts at "now"').
    const generation = ++this.#generation;
    let early: WatchEvent[] | undefined = [];
    // The watch may end (compacted) before this resolves: #onWatchEnd then sets #syncWanted and #sync loops.
    const handle = await openWatch(
      this.client,
      { key: this.#prefix, prefix: true },
      {
        onEvents: (events) => (early ? early.push(...events) : this.#onEvents(generation, events)),
        onEnd: (err) => this.#onWatchEnd(generation, err),
      },
      signal,
    );
    let snapshot: Awaited<ReturnType<typeof listPrefix>>;
    try {
      snapshot = await listPrefix(this.client, this.#prefix, this.#pageSize, signal, handle.createdRevision);
    } catch (err) {
      handle.close();
      throw err;
    }
    if (signal.aborted || generation !== this.#generation) return handle.close();
    this.#applySnapshot(snapshot.kvs, snapshot.revision, compactRevision);
    const events = early;
    early = undefined;
    this.#onEvents(generation, events);
    if (!this.#syncWanted) this.#watch = handle;
    else handle.close();
    if (!this.#ready) this.#becomeReady();
  }

  /** A list or watch failed (it is retried): a first load that fails for good rejects the pending `ready()`. */
  #syncFailed(err: Error): void {
    if (!this.#ready && !isTransient(err)) {
      this.#readyGate.reject(err);
      this.#readyGate = gate();
    }
    emitSafely(this, 'error', err);
    log('%s: list/watch failed (%s); retrying', showKey(this.#prefix), err.message);
  }

  #applySnapshot(kvs: KeyValue[], revision: bigint, compactRevision: bigint | undefined): void {
    const previous = this.#entries;
    const next = snapshotEntries(kvs, previous);
    this.#entries = next;
    this.#revision = revision;
    if (!this.#ready) {
      log('%s: loaded %d keys at revision %s', showKey(this.#prefix), next.size, revision);
      return;
    }
    // A re-list: emit the difference, in key order, with the cache already at the new snapshot.
    const changes = snapshotDiff(previous, next, revision);
    log('%s: re-listed at revision %s after compaction: %d changes', showKey(this.#prefix), revision, changes.length);
    for (const [k, c] of changes) this.#publish(k, c);
    if (this.listenerCount('resync') > 0)
      emitSafely(this, 'resync', { revision, compactRevision, changes: changes.length });
    publish('prefixCacheResync', () => ({
      prefix: showKey(this.#prefix),
      revision,
      compactRevision,
      changes: changes.length,
    }));
  }

  #becomeReady(): void {
    this.#ready = true;
    emitSafely(this, 'ready');
    this.#readyGate.resolve();
  }

  #onEvents(generation: number, events: WatchEvent[]): void {
    if (generation !== this.#generation) return;
    for (const ev of events) {
      const rev = ev.kv.modRevision;
      const k = mapKeyOf(ev.kv.key);
      const old = this.#entries.get(k);
      if (old && old.modRevision >= rev) continue; // already reflected (never expected; cheap to guard)
      if (ev.type === 'put') {
        const entry = makeEntry(k, ev.kv);
        this.#entries.set(k, entry);
        if (rev > this.#revision) this.#revision = rev;
        this.#publish(k, change(entry, old, rev, false));
      } else {
        if (rev > this.#revision) this.#revision = rev;
        if (!old) continue;
        this.#entries.delete(k);
        this.#publish(k, change(undefined, old, rev, false));
      }
    }
  }

  #onWatchEnd(generation: number, err: Error): void {
    if (generation !== this.#generation || this.closed) return;
    this.#watch = undefined;
    if (isClientClosed(err)) {
      void this.close();
      return;
    }
    if (err instanceof WatchCompactedError) {
      log('%s: watch compacted at %s; re-listing', showKey(this.#prefix), err.compactRevision);
      this.#requestSync(err.compactRevision);
      return;
    }
    emitSafely(this, 'error', err);
    log('%s: watch ended (%s); re-listing', showKey(this.#prefix), err.message);
    void delay(100, this.#stop.signal).then(
      () => this.#requestSync(undefined),
      () => undefined,
    );
  }

  #publish(mapKey: string, c: PrefixCacheChange): void {
    for (const s of this.#streams) s.push(c, mapKey);
    emitSafely(this, 'change', c);
  }
}
