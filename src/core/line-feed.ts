import type { Namespace } from 'etcd3';
import { raceAbort, untilWoken } from './abort.js';
import { clusterOf } from './cluster-id.js';
import { isClientClosed } from './etcd-errors.js';
import { encodeKey } from './kv.js';
import type { Logger } from './log.js';
import { retrying } from './retry.js';
import { openWatch, type WatchEvent, type WatchHandle, type WatchSpec } from './watch-hub.js';
import { WholeWrites } from './whole-writes.js';

/*
 * The watches a line's waiters follow: opened before the read (or join) a
 * waiter starts from, and kept while waiters wait (and LINGER_MS after), so
 * that a waiter learns its turn from events instead of a watch and a read
 * per turn. One feed per process serves every recipe object on the same line
 * (same cluster, same full keys), whichever client each uses. The consumer
 * line (core/queue-line.ts) and waitInLine (core/wait.ts) follow feeds
 * (docs/internals.md, "The line's feed").
 */

/** How long the watches stay open after the last subscriber left, for the next one. */
const LINGER_MS = 250;

/** Whether a subscriber keeps an event, and whether the event wakes it. */
export type EventInterest = (event: WatchEvent) => 'skip' | 'keep' | 'wake';

/** What one waiter heard since it subscribed. */
export class FeedSub {
  /** False once the watches ended (compaction, closed client): re-read, and subscribe again. */
  live = true;
  /** Which events this subscriber keeps and which wake it; by default every event wakes it. */
  interest: EventInterest = () => 'wake';
  #events: WatchEvent[] = [];
  #woken = false;
  #wake: (() => void) | undefined;
  readonly close: () => void;

  constructor(close: (sub: FeedSub) => void) {
    this.close = () => close(this);
  }

  push(events: WatchEvent[]): void {
    for (const event of events) {
      const interest = this.interest(event);
      if (interest === 'skip') continue;
      this.#events.push(event);
      if (interest === 'wake') this.#woken = true;
    }
    if (this.#woken) this.#wake?.();
  }

  end(): void {
    this.live = false;
    this.#wake?.();
  }

  /** Resolves once a waking event (or the end) is there; rejects with the signal's reason. */
  next(signal: AbortSignal): Promise<void> {
    if (this.#woken || !this.live) return Promise.resolve();
    return untilWoken(signal, (wake) => {
      this.#wake = wake;
    });
  }

  /** The events kept since the last call. */
  take(): WatchEvent[] {
    this.#woken = false;
    return this.#events.splice(0);
  }
}

/** The live feeds of this process, by cluster and full keys (namespace included). */
const feeds = new Map<string, LineFeed>();

/**
 * A subscription to the feed of `specs` as `client` sees them: it hears
 * every event after it resolves (every watch is live by then).
 */
export function subscribe(
  client: Namespace,
  specs: WatchSpec[],
  log: Logger,
  signal: AbortSignal | undefined,
): Promise<FeedSub> {
  const id = feedId(client, specs);
  let feed = id ? feeds.get(id) : undefined;
  if (!feed) {
    feed = new LineFeed(specs, log, id || undefined);
    if (id) feeds.set(id, feed);
  }
  return feed.subscribe(client, signal);
}

/**
 * A subscription to the feed of `specs` if its watches are live already,
 * else undefined: for a waiter that must not wait for a watch to open.
 */
export function subscribeIfLive(client: Namespace, specs: WatchSpec[]): FeedSub | undefined {
  const id = feedId(client, specs);
  const feed = id ? feeds.get(id) : undefined;
  return feed?.ready ? feed.subscribeLive() : undefined;
}

/** Opens the feed of `specs` in the background (it lingers), so that the next waiter finds it live. */
export function openFeed(client: Namespace, specs: WatchSpec[], log: Logger): void {
  const id = feedId(client, specs);
  if (!id || feeds.get(id)?.active) return; // open or opening already (or, without a cluster, never found)
  void subscribe(client, specs, log, undefined).then(
    (sub) => sub.close(),
    () => undefined,
  );
}

function feedId(client: Namespace, specs: WatchSpec[]): string | undefined {
  const cluster = clusterOf(client);
  return cluster && [cluster, client.prefix.toString('latin1'), ...specs.map(specId(client))].join('\u0000');
}

const specId = (client: Namespace) => (spec: WatchSpec) =>
  `${encodeKey(client, spec.key).toString('latin1')}${spec.prefix ? '*' : ''}${
    spec.end ? `..${encodeKey(client, spec.end).toString('latin1')}` : ''
  }${spec.noPut ? '-put' : ''}${spec.prevKv ? '+prev' : ''}`;

/** The watches of one line, shared by the waiters of every recipe object on it in this process. */
class LineFeed {
  readonly #specs: WatchSpec[];
  readonly #log: Logger;
  readonly #id: string | undefined;
  readonly #subs = new Set<FeedSub>();
  #live: Promise<WatchHandle[]> | undefined;
  /** The client the watches were opened on. */
  #client: Namespace | undefined;
  #idle: NodeJS.Timeout | undefined;
  /** Gathers each write's events from the watches (core/whole-writes.ts). */
  #writes: WholeWrites | undefined;
  /** The watches are live: a new subscriber hears every later event at once. */
  ready = false;

  constructor(specs: WatchSpec[], log: Logger, id: string | undefined) {
    this.#specs = specs;
    this.#log = log;
    this.#id = id;
  }

  /** The watches are open or opening. */
  get active(): boolean {
    return this.#live !== undefined;
  }

  subscribeLive(): FeedSub {
    clearTimeout(this.#idle);
    const sub = new FeedSub((s) => this.#unsubscribe(s));
    this.#subs.add(sub);
    return sub;
  }

  async subscribe(client: Namespace, signal: AbortSignal | undefined): Promise<FeedSub> {
    const sub = this.subscribeLive();
    try {
      await retrying(
        async () => {
          // Each round that fails on another object's closed client re-opens the feed; bounded all the same.
          for (let round = 0; ; round++) {
            if (!this.#live) {
              this.#client = client;
              this.#live = this.#open(client);
            }
            const opener = this.#client;
            try {
              return await raceAbort(this.#live, signal);
            } catch (err) {
              // Another object's client was closed under the feed (which dropped it): open it on ours.
              if (opener === client || !isClientClosed(err) || round >= 100) throw err;
            }
          }
        },
        { signals: [signal], maxElapsedMs: Infinity, onRetry: (err) => this.#log('feed: %s', (err as Error).message) },
      );
    } catch (err) {
      sub.close();
      throw err;
    }
    return sub;
  }

  #open(client: Namespace): Promise<WatchHandle[]> {
    const handles: WatchHandle[] = [];
    let live: Promise<WatchHandle[]> | undefined;
    const writes = new WholeWrites(this.#specs.length, (events) => {
      if (this.#live === live) for (const sub of this.#subs) sub.push(events);
    });
    this.#writes = writes;
    const listener = (watch: number) => ({
      onEvents: (events: WatchEvent[]) => writes.add(watch, events),
      onEnd: () => {
        if (this.#live === live) this.#drop();
      },
      // Its waiters may use other clients: they must not wait on this one's reconnection.
      onInterrupted: () => {
        if (this.#live === live && this.ready) this.#drop();
      },
    });
    live = (async () => {
      try {
        for (const [i, spec] of this.#specs.entries()) handles.push(await openWatch(client, spec, listener(i)));
        if (this.#live === live) this.ready = true;
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
    this.ready = false;
    this.#writes?.close();
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
      if (this.#subs.size) return;
      this.#drop();
      if (this.#id && feeds.get(this.#id) === this) feeds.delete(this.#id);
    }, LINGER_MS).unref();
  }
}
