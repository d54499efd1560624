import { isAscii, isUtf8 } from 'node:buffer';
import type { Namespace } from 'etcd3';
import { isCompacted } from '../core/etcd-errors.js';
import { range, type KeyValue } from '../core/kv.js';
import { logger } from '../core/log.js';
import { prefixEnd, showKey } from '../core/keys.js';
import { retrying } from '../core/retry.js';

const log = logger('prefix-cache');
import type { WaitOptions } from '../core/options.js';

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

/** The map key of a key: its bytes as latin1, one char per byte (bijective, byte-ordered). */
export function mapKeyOf(key: Buffer): string {
  return key.toString('latin1');
}

export function mapKeyOfInput(key: string | Buffer): string {
  if (typeof key === 'string') return /^\p{ASCII}*$/u.test(key) ? key : Buffer.from(key, 'utf8').toString('latin1');
  return key.toString('latin1');
}

export function makeEntry(mapKey: string, kv: KeyValue): CachedKeyValue {
  // For ASCII keys the latin1 map key already is the UTF-8 string: share it.
  return new CachedKeyValue(kv, isAscii(kv.key) ? mapKey : kv.key.toString('utf8'));
}

export function change(
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
 * Merges a change pending for a slow consumer with the next change of the
 * same key: the first one's previous value, the latest value and revision.
 * A key created and deleted while pending drops out (undefined).
 */
export function mergeChanges(old: PrefixCacheChange, c: PrefixCacheChange): PrefixCacheChange | undefined {
  if (!old.prevEntry && !c.entry) return undefined;
  return { ...c, prevValue: old.prevValue, prevEntry: old.prevEntry, resync: old.resync || c.resync };
}

/** The entries of a new list: an entry unchanged since `previous` is kept as the same object. */
export function snapshotEntries(kvs: KeyValue[], previous: Map<string, CachedKeyValue>): Map<string, CachedKeyValue> {
  const next = new Map<string, CachedKeyValue>();
  for (const kv of kvs) {
    const k = mapKeyOf(kv.key);
    const old = previous.get(k);
    next.set(k, old && old.modRevision === kv.modRevision ? old : makeEntry(k, kv));
  }
  return next;
}

/** What changed from `previous` to `next` (a re-list at `revision`), as changes in key order. */
export function snapshotDiff(
  previous: Map<string, CachedKeyValue>,
  next: Map<string, CachedKeyValue>,
  revision: bigint,
): [string, PrefixCacheChange][] {
  const changes: [string, PrefixCacheChange][] = [];
  for (const [k, old] of previous) if (!next.has(k)) changes.push([k, change(undefined, old, revision, true)]);
  for (const [k, entry] of next) {
    const old = previous.get(k);
    if (old !== entry) changes.push([k, change(entry, old, revision, true)]);
  }
  return changes.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

/**
 * Every key under `prefix` at one revision, in pages of `pageSize`; later
 * pages are read at the first page's revision. Listed again if that
 * revision gets compacted while paging.
 */
export function listPrefix(
  client: Namespace,
  prefix: Buffer,
  pageSize: number,
  signal: AbortSignal,
  at?: bigint,
): Promise<{ kvs: KeyValue[]; revision: bigint }> {
  const end = prefixEnd(prefix);
  const forever = { signals: [signal], maxElapsedMs: Infinity };
  const list = async () => {
    const kvs: KeyValue[] = [];
    let revision: bigint | undefined = at;
    for (let from = prefix; ; ) {
      const pinned = revision;
      const page = await retrying(() => range(client, from, { end, limit: pageSize, revision: pinned }), forever);
      revision ??= page.revision;
      for (const kv of page.kvs) kvs.push(kv);
      const last = page.kvs[page.kvs.length - 1];
      if (!page.more || !last) return { kvs, revision };
      from = Buffer.concat([last.key, Buffer.from([0])]);
    }
  };
  return retrying(list, {
    ...forever,
    // A list pinned by the caller cannot move on: the caller starts over.
    retryIf: (err) => at === undefined && isCompacted(err),
    onRetry: () => log('%s: list revision compacted while paging; listing again', showKey(prefix)),
  });
}
