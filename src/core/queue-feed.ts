import type { Namespace } from 'etcd3';
import { raceAbort, untilWoken } from './abort.js';
import type { Logger } from './log.js';
import { retrying } from './retry.js';
import { openWatch, type WatchEvent, type WatchHandle, type WatchSpec } from './watch-hub.js';

/*
 * The watches a consumer line's waiters follow (core/queue-line.ts): opened
 * once per recipe object, before the read a waiter starts from, and kept
 * while takes wait (and LINGER_MS after), so that a waiter learns its turn
 * and the candidates from events instead of a watch and a read per turn
 * (docs/internals.md, "The consumer line's feed").
 */

/** How long the watches stay open after the last waiting take, for the next one. */
const LINGER_MS = 250;

/** What one take heard since it subscribed. */
export class FeedSub {
  /** False once the watches ended (compaction, closed client): re-read, and subscribe again. */
  live = true;
  #events: WatchEvent[] = [];
  #wake: (() => void) | undefined;
  readonly close: () => void;

  constructor(close: (sub: FeedSub) => void) {
    this.close = () => close(this);
  }

  push(events: WatchEvent[]): void {
    this.#events.push(...events);
    this.#wake?.();
  }

  end(): void {
    this.live = false;
    this.#wake?.();
  }

  /** Resolves once events (or the end) are there; rejects with the signal's reason. */
  next(signal: AbortSignal): Promise<void> {
    if (this.#events.length || !this.live) return Promise.resolve();
    return untilWoken(signal, (wake) => {
      this.#wake = wake;
    });
  }

  /** The events heard since the last call. */
  take(): WatchEvent[] {
    return this.#events.splice(0);
  }
}

/** The watches of one consumer line, shared by its takes. */
export class LineFeed {
  readonly #client: Namespace;
  readonly #specs: WatchSpec[];
  readonly #log: Logger;
  readonly #subs = new Set<FeedSub>();
  #live: Promise<WatchHandle[]> | undefined;
  #idle: NodeJS.Timeout | undefined;

  constructor(client: Namespace, specs: WatchSpec[], log: Logger) {
    this.#client = client;
    this.#specs = specs;
    this.#log = log;
  }

  /** A subscription that hears every event after it resolves (every watch is live by then). */
  async subscribe(signal: AbortSignal | undefined): Promise<FeedSub> {
    clearTimeout(this.#idle);
    const sub = new FeedSub((s) => this.#unsubscribe(s));
    this.#subs.add(sub);
    try {
      await retrying(
        () => {
          this.#live ??= this.#open();
          return raceAbort(this.#live, signal);
        },
        { signals: [signal], maxElapsedMs: Infinity, onRetry: (err) => this.#log('feed: %s', (err as Error).message) },
      );
    } catch (err) {
      sub.close();
      throw err;
    }
    return sub;
  }

  /** Closes the watches now; live subscriptions end. */
  close(): void {
    clearTimeout(this.#idle);
    this.#drop();
  }

  #open(): Promise<WatchHandle[]> {
    const handles: WatchHandle[] = [];
    let live: Promise<WatchHandle[]> | undefined;
    const listener = {
      onEvents: (events: WatchEvent[]) => {
        for (const sub of this.#subs) sub.push(events);
      },
      onEnd: () => {
        if (this.#live === live) this.#drop();
      },
    };
    live = (async () => {
      try {
        for (const spec of this.#specs) handles.push(await openWatch(this.#client, spec, listener));
        return handles;
      } catch (err) {
        for (const h of handles) h.close();
        if (this.#live === live) this.#live = undefined;
        throw err;
      }
    })();
    return live;
  }

  /** The watches end: every take re-reads on its own (and subscribes again). */
  #drop(): void {
    const live = this.#live;
    this.#live = undefined;
    for (const sub of this.#subs) sub.end();
    void live?.then(
      (hs) => {
        for (const h of hs) h.close();
      },
      () => undefined,
    );
  }

  #unsubscribe(sub: FeedSub): void {
    if (!this.#subs.delete(sub) || this.#subs.size) return;
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => {
      if (!this.#subs.size) this.#drop();
    }, LINGER_MS).unref();
  }
}
