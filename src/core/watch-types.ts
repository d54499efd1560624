import type { KeyValue } from './kv.js';

// What a watch on the hub (watch-hub.ts) is asked for and what it delivers.

/** What to watch. Keys are as the recipe sees them (the client's namespace is applied here). */
export interface WatchSpec {
  key: Buffer;
  /** Watch every key starting with `key`. */
  prefix?: boolean;
  /** Watch every key from `key` up to, not including, `end` (instead of `prefix`). */
  end?: Buffer;
  /** First revision to deliver; omit to start "now" (the watch is then synced at once). */
  startRevision?: bigint;
  /** Skip put events. */
  noPut?: boolean;
  /** Skip delete events. */
  noDelete?: boolean;
  /** Ask etcd for the previous key-value with each event. */
  prevKv?: boolean;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  /** For a delete: the key and the deletion's mod revision (create revision 0). */
  kv: KeyValue;
  prevKv?: KeyValue;
}

/** The watch's start revision was compacted away: re-read the state and watch again from there. */
export class WatchCompactedError extends Error {
  readonly compactRevision: bigint;
  constructor(compactRevision: bigint) {
    super(`watch start revision compacted (compact revision ${compactRevision})`);
    this.name = 'WatchCompactedError';
    this.compactRevision = compactRevision;
  }
}

export interface WatchListener {
  /** Events of one revision range, in order. `revision` is the response header's revision. */
  onEvents(events: WatchEvent[], revision: bigint): void;
  /** The watch ended for good (compaction, cancellation by the server, closed client). */
  onEnd(err: Error): void;
  /** The stream broke; the watch resumes on a new one with the events it missed, unless it ends. */
  onInterrupted?(err: Error): void;
}

/** A live watch. */
export interface WatchHandle {
  /** The store revision when etcd created the watch; events after it are delivered. */
  readonly createdRevision: bigint;
  /** Stops the watch. Idempotent. */
  close(): void;
}
