import type { WaitOptions } from '../core/options.js';
import { EventEmitter } from 'node:events';
import { isAscii, isUtf8 } from 'node:buffer';
import { ClientClosedError, type Namespace } from 'etcd3';
import { abortReason, delay } from '../core/abort.js';
import { clientScope } from '../core/client.js';
import { publish } from '../core/diagnostics.js';
import { ClosedError, isRecipeError } from '../core/errors.js';
import { prefixEnd, showKey, toBuffer } from '../core/keys.js';
import { range, type KeyValue } from '../core/kv.js';
import { logger } from '../core/log.js';
import { isTransient, retrying } from '../core/retry.js';
import { checkClient, checkInteger, checkName, checkOptions, checkSignal } from '../core/validate.js';
import { openWatch, WatchCompactedError, type WatchEvent, type WatchHandle } from '../core/watch-hub.js';
import { emitSafely } from '../core/events.js';

const log = logger('prefix-cache');

/** Options of {@link PrefixCache}. */
export interface PrefixCacheOptions {
  /**
   * Keys per request when listing the prefix (the first load and every
   * re-list after compaction). Every page is read at the revision of the
   * first one, so the snapshot is consistent however many pages it takes.
   * Default 1000.
   */
  pageSize?: number;
}

/** Options of the waiting calls of {@link PrefixCache}. */
export type PrefixCacheWaitOptions = WaitOptions;

/**
 * One key of a {@link PrefixCache}, as etcd last reported it. Immutable: a
 * change replaces the object.
 * @hideconstructor
 */
export class CachedKeyValue {
  /** The key (UTF-8 decoded; see {@link CachedKeyValue.keyBuffer} for the exact bytes). */
  readonly key: string;
  /** The value (UTF-8 decoded; see {@link CachedKeyValue.valueBuffer} for the exact bytes). */
  readonly value: string;
  /** Revision of the key's creation. */
  readonly createRevision: bigint;
  /** Revision of the key's last change. */
  readonly modRevision: bigint;
  /** Number of changes since creation (1 for a new key). */
  readonly version: bigint;
  /** Lease ID (decimal string) the key is attached to; '0' for none. */
  readonly lease: string;
  // The exact bytes, kept only when they are not valid UTF-8 (rare): the strings are the compact form.
  readonly #rawKey: Buffer | undefined;
  readonly #rawValue: Buffer | undefined;

  /**
   * Made by the cache for each entry; not meant to be called directly.
   * @param kv - the key-value as etcd3 returned it
   * @param key - the key as a string
   */
  constructor(kv: KeyValue, key: string) {
    this.key = key;
    this.value = kv.value.toString('utf8');
    this.#rawValue = isUtf8(kv.value) ? undefined : Buffer.from(kv.value);
    this.#rawKey = isUtf8(kv.key) ? undefined : Buffer.from(kv.key);
    this.createRevision = kv.createRevision;
    this.modRevision = kv.modRevision;
    this.version = kv.version;
    this.lease = kv.lease;
  }

  /** The key's exact bytes (a copy). */
  get keyBuffer(): Buffer {
    return this.#rawKey ? Buffer.from(this.#rawKey) : Buffer.from(this.key, 'utf8');
  }

  /** The value's exact bytes (a copy). */
  get valueBuffer(): Buffer {
    return this.#rawValue ? Buffer.from(this.#rawValue) : Buffer.from(this.value, 'utf8');
  }
}

/** One change of a {@link PrefixCache}: a key created, updated or deleted. */
export interface PrefixCacheChange {
  /** `'put'` (created or updated) or `'delete'`. */
  type: 'put' | 'delete';
  /** The key. */
  key: string;
  /** The new value; undefined for a delete. */
  value: string | undefined;
  /** The value before the change; undefined if the key did not exist. */
  prevValue: string | undefined;
  /** The new key-value with its revisions; undefined for a delete. */
  entry: CachedKeyValue | undefined;
  /** The key-value before the change; undefined if the key did not exist. */
  prevEntry: CachedKeyValue | undefined;
  /**
   * The revision of the change: the event's revision, or for a change found
   * by a re-list (`resync: true`) the revision of that list.
   */
  revision: bigint;
  /**
   * True when the change was found by comparing a re-list with the cache
   * (after the watch's revision was compacted): changes in between were lost
   * to compaction, this is their net effect.
   */
  resync: boolean;
}

/** What a re-list after compaction found. */
export interface PrefixCacheResync {
  /** Revision of the new snapshot. */
  revision: bigint;
  /** The compaction revision that ended the watch. */
  compactRevision: bigint | undefined;
  /** How many change events the difference produced. */
  changes: number;
}

/** Events of a {@link PrefixCache}. */
export interface PrefixCacheEvents {
  /** A key changed. The cache already reflects the change when this is emitted. */
  change: [change: PrefixCacheChange];
  /** The first list is loaded and the watch is live. */
  ready: [];
  /** The watch's revision was compacted; the cache re-listed and emitted the difference. */
  resync: [info: PrefixCacheResync];
  /**
   * A failure the cache is retrying (etcd unreachable for long, a watch
   * cancelled by the server, a non-transient list error). Informational:
   * the cache never stops because of it. Only emitted when a listener exists.
   */
  error: [err: Error];
  /** The cache was closed (by `close()`, or because its client was closed). */
  closed: [];
}

interface ReadyWaiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** The map key of a key: its bytes as latin1, one char per byte (bijective, byte-ordered). */
function mapKeyOf(key: Buffer): string {
  return key.toString('latin1');
}

function mapKeyOfInput(key: string | Buffer): string {
  if (typeof key === 'string') return /^\p{ASCII}*$/u.test(key) ? key : Buffer.from(key, 'utf8').toString('latin1');
  return key.toString('latin1');
}

function closedError(): Error {
  return new DOMException('the PrefixCache was closed', 'AbortError');
}

function isCompacted(err: unknown): boolean {
  return err instanceof Error && /required revision has been compacted/i.test(err.message);
}

const MAX_BACKOFF_MS = 2000;

/**
 * A local, always-current copy of every key under a prefix: a list, then a
 * watch from the list's revision + 1.
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
  readonly #end: Buffer;
  readonly #pageSize: number;
  #entries = new Map<string, CachedKeyValue>();
  #revision = 0n;
  #ready = false;
  #readyWaiters: ReadyWaiter[] = [];
  #watch: WatchHandle | undefined;
  /** Incremented with every list+watch cycle; stale watch callbacks compare against it. */
  #generation = 0;
  #syncing = false;
  #syncWanted: { compactRevision: bigint | undefined } | undefined;
  readonly #stop = new AbortController();
  readonly #streams = new Set<ChangeStream>();
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
    this.#end = prefixEnd(this.#prefix);
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
    checkOptions(options);
    checkSignal(options.signal);
    const { signal } = options;
    if (this.#ready) return Promise.resolve();
    if (this.closed) return Promise.reject(closedError());
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#readyWaiters.indexOf(waiter);
        if (i >= 0) this.#readyWaiters.splice(i, 1);
        reject(abortReason(signal!));
      };
      const waiter: ReadyWaiter = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (err) => {
          signal?.removeEventListener('abort', onAbort);
          reject(err);
        },
      };
      this.#readyWaiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
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
    checkOptions(options);
    checkSignal(options.signal);
    const stream = new ChangeStream(() => this.#streams.delete(stream), options.signal);
    if (this.closed) stream.end();
    else this.#streams.add(stream);
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
      for (const w of this.#readyWaiters.splice(0)) w.reject(reason);
      for (const s of [...this.#streams]) s.end();
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

  /** List, then watch from the list's revision + 1; retried until it works or the cache closes. */
  async #sync(): Promise<void> {
    this.#syncing = true;
    const signal = this.#stop.signal;
    let backoff = 50;
    try {
      while (this.#syncWanted && !signal.aborted) {
        const { compactRevision } = this.#syncWanted;
        this.#syncWanted = undefined;
        try {
          const snapshot = await this.#list(signal);
          if (signal.aborted) return;
          const generation = ++this.#generation;
          this.#applySnapshot(snapshot.kvs, snapshot.revision, compactRevision);
          // The watch may end (compacted) before this resolves: #onWatchEnd then sets #syncWanted and we loop.
          const handle = await openWatch(
            this.client,
            {
              key: this.#prefix,
              prefix: true,
              startRevision: snapshot.revision + 1n,
            },
            {
              onEvents: (events) => this.#onEvents(generation, events),
              onEnd: (err) => this.#onWatchEnd(generation, err),
            },
            signal,
          );
          if (generation === this.#generation && !this.#syncWanted) this.#watch = handle;
          else handle.close();
          if (!this.#ready) this.#becomeReady();
          backoff = 50;
        } catch (err) {
          if (signal.aborted) return;
          if (isClientClosed(err)) {
            void this.close();
            return;
          }
          this.#syncWanted ??= { compactRevision };
          if (!this.#ready && !isTransient(err)) {
            for (const w of this.#readyWaiters.splice(0)) w.reject(err);
          }
          this.#emitError(err as Error);
          log('%s: list/watch failed (%s); retrying in %d ms', showKey(this.#prefix), (err as Error).message, backoff);
          await delay(backoff, signal).catch(() => undefined);
          backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
        }
      }
    } finally {
      this.#syncing = false;
    }
  }

  /** Every key under the prefix at one revision, in pages. Restarts if that revision gets compacted meanwhile. */
  async #list(signal: AbortSignal): Promise<{ kvs: KeyValue[]; revision: bigint }> {
    for (;;) {
      const kvs: KeyValue[] = [];
      let revision: bigint | undefined;
      let from = this.#prefix;
      try {
        for (;;) {
          const at = revision;
          const page = await retrying(
            () => range(this.client, from, { end: this.#end, limit: this.#pageSize, revision: at }),
            {
              signals: [signal],
              maxElapsedMs: Infinity,
            },
          );
          revision ??= page.revision;
          for (const kv of page.kvs) kvs.push(kv);
          const last = page.kvs[page.kvs.length - 1];
          if (!page.more || !last) break;
          from = Buffer.concat([last.key, Buffer.from([0])]);
        }
        return { kvs, revision };
      } catch (err) {
        if (isCompacted(err) && !signal.aborted) {
          log('%s: list revision %s compacted while paging; listing again', showKey(this.#prefix), revision);
          continue;
        }
        throw err;
      }
    }
  }

  #applySnapshot(kvs: KeyValue[], revision: bigint, compactRevision: bigint | undefined): void {
    const previous = this.#entries;
    const next = new Map<string, CachedKeyValue>();
    for (const kv of kvs) {
      const k = mapKeyOf(kv.key);
      const old = previous.get(k);
      next.set(k, old && old.modRevision === kv.modRevision ? old : makeEntry(k, kv));
    }
    this.#entries = next;
    this.#revision = revision;
    if (!this.#ready) {
      log('%s: loaded %d keys at revision %s', showKey(this.#prefix), next.size, revision);
      return;
    }
    // A re-list: emit the difference, in key order, with the cache already at the new snapshot.
    const changes: [string, PrefixCacheChange][] = [];
    for (const [k, old] of previous) {
      if (!next.has(k)) changes.push([k, change(undefined, old, revision, true)]);
    }
    for (const [k, entry] of next) {
      const old = previous.get(k);
      if (old !== entry) changes.push([k, change(entry, old, revision, true)]);
    }
    changes.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    log('%s: re-listed at revision %s after compaction: %d changes', showKey(this.#prefix), revision, changes.length);
    for (const [k, c] of changes) this.#publish(k, c);
    if (this.listenerCount('resync') > 0)
      this.#safeEmit('resync', { revision, compactRevision, changes: changes.length });
    publish('prefixCacheResync', () => ({
      prefix: showKey(this.#prefix),
      revision,
      compactRevision,
      changes: changes.length,
    }));
  }

  #becomeReady(): void {
    this.#ready = true;
    this.#safeEmit('ready');
    for (const w of this.#readyWaiters.splice(0)) w.resolve();
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
    this.#emitError(err);
    log('%s: watch ended (%s); re-listing', showKey(this.#prefix), err.message);
    void delay(100, this.#stop.signal).then(
      () => this.#requestSync(undefined),
      () => undefined,
    );
  }

  #publish(mapKey: string, c: PrefixCacheChange): void {
    for (const s of this.#streams) s.push(mapKey, c);
    this.#safeEmit('change', c);
  }

  #safeEmit<K extends keyof PrefixCacheEvents>(event: K, ...args: PrefixCacheEvents[K]): void {
    emitSafely(this, event as string, args);
  }

  #emitError(err: Error): void {
    this.#safeEmit('error', err);
  }
}

function isClientClosed(err: unknown): boolean {
  return (
    err instanceof ClientClosedError ||
    isRecipeError(err, 'CLOSED') ||
    (err instanceof Error && /client was already closed/i.test(err.message))
  );
}

function makeEntry(mapKey: string, kv: KeyValue): CachedKeyValue {
  // For ASCII keys the latin1 map key already is the UTF-8 string: share it.
  return new CachedKeyValue(kv, isAscii(kv.key) ? mapKey : kv.key.toString('utf8'));
}

function change(
  entry: CachedKeyValue | undefined,
  prev: CachedKeyValue | undefined,
  revision: bigint,
  resync: boolean,
): PrefixCacheChange {
  return {
    type: entry ? 'put' : 'delete',
    key: (entry ?? prev)!.key,
    value: entry?.value,
    prevValue: prev?.value,
    entry,
    prevEntry: prev,
    revision,
    resync,
  };
}

/**
 * The async iterator behind {@link PrefixCache.changes}: pending changes are
 * kept per key (in the order of their latest change) and merged, so the
 * buffer never holds more than one change per key.
 */
class ChangeStream implements AsyncIterableIterator<PrefixCacheChange> {
  readonly #pending = new Map<string, PrefixCacheChange>();
  readonly #unsubscribe: () => void;
  readonly #signal: AbortSignal | undefined;
  #waiter: { resolve: (r: IteratorResult<PrefixCacheChange>) => void; reject: (err: unknown) => void } | undefined;
  #ended = false;
  #failed: unknown;
  readonly #onAbort = () => this.#fail(abortReason(this.#signal!));

  constructor(unsubscribe: () => void, signal: AbortSignal | undefined) {
    this.#unsubscribe = unsubscribe;
    this.#signal = signal;
    if (signal?.aborted) this.#fail(abortReason(signal));
    else signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  push(mapKey: string, c: PrefixCacheChange): void {
    if (this.#ended) return;
    const old = this.#pending.get(mapKey);
    if (old) {
      this.#pending.delete(mapKey);
      // Created and deleted while pending: nothing happened, as far as this consumer can tell.
      if (!old.prevEntry && !c.entry) return;
      c = {
        type: c.entry ? 'put' : 'delete',
        key: c.key,
        value: c.value,
        prevValue: old.prevValue,
        entry: c.entry,
        prevEntry: old.prevEntry,
        revision: c.revision,
        resync: old.resync || c.resync,
      };
    }
    this.#pending.set(mapKey, c);
    this.#deliver();
  }

  /** No more changes: the consumer drains what is pending, then the iterator is done. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#detach();
    this.#deliver();
  }

  next(): Promise<IteratorResult<PrefixCacheChange>> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    const first = this.#take();
    if (first) return Promise.resolve({ value: first, done: false });
    if (this.#ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<PrefixCacheChange>> {
    this.#ended = true;
    this.#pending.clear();
    this.#detach();
    this.#deliver();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<PrefixCacheChange> {
    return this;
  }

  #take(): PrefixCacheChange | undefined {
    for (const [k, c] of this.#pending) {
      this.#pending.delete(k);
      return c;
    }
    return undefined;
  }

  #deliver(): void {
    const w = this.#waiter;
    if (!w) return;
    const first = this.#take();
    if (first) {
      this.#waiter = undefined;
      w.resolve({ value: first, done: false });
    } else if (this.#ended) {
      this.#waiter = undefined;
      w.resolve({ value: undefined, done: true });
    }
  }

  #fail(reason: unknown): void {
    this.#failed = reason;
    this.#ended = true;
    this.#pending.clear();
    this.#detach();
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.reject(reason);
  }

  #detach(): void {
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#unsubscribe();
  }
}
