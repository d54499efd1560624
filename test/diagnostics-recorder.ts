import { DIAGNOSTICS_CHANNELS, TRACING_CHANNELS, subscribeDiagnostics, subscribeTracing } from '../src/index.js';

/** One thing a subscriber saw: a point message, or one event of a tracing channel. */
export interface Seen {
  /** `etcd-recipes:lock:released`, or `etcd-recipes:lock:start` / `:asyncEnd` / `:error` for tracing channels. */
  what: string;
  message: Record<string, unknown>;
}

/**
 * Subscribes to every channel the library declares and records what it sees,
 * in order. `until` awaits an event (no sleeping), bounded in time.
 */
export class ChannelRecorder {
  readonly seen: Seen[] = [];
  readonly #unsubscribe: (() => void)[] = [];
  #waiters: { match: (s: Seen) => boolean; resolve: (s: Seen) => void }[] = [];

  constructor() {
    for (const name of Object.values(DIAGNOSTICS_CHANNELS)) {
      this.#unsubscribe.push(subscribeDiagnostics(name, (message) => this.#add(name, message as never)));
    }
    for (const name of Object.values(TRACING_CHANNELS)) {
      this.#unsubscribe.push(
        subscribeTracing(name, {
          start: (c) => this.#add(`${name}:start`, c as never),
          asyncEnd: (c) => this.#add(`${name}:asyncEnd`, c as never),
          error: (c) => this.#add(`${name}:error`, c as never),
        }),
      );
    }
  }

  #add(what: string, message: Record<string, unknown>): void {
    // Tracing contexts are one object mutated along the call: keep what it said at this event.
    const s = { what, message: { ...message } };
    this.seen.push(s);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) {
      if (w.match(s)) w.resolve(s);
      else this.#waiters.push(w);
    }
  }

  /** Events matching `filter`, in order. */
  filter(filter: (s: Seen) => boolean): Seen[] {
    return this.seen.filter(filter);
  }

  /** Resolves with the first event (already seen or to come) matching `match`. */
  until(match: (s: Seen) => boolean, timeoutMs = 20_000, label = 'event'): Promise<Seen> {
    const found = this.seen.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${label} within ${timeoutMs} ms`)), timeoutMs);
      this.#waiters.push({
        match,
        resolve: (s) => {
          clearTimeout(timer);
          resolve(s);
        },
      });
    });
  }

  close(): void {
    for (const u of this.#unsubscribe.splice(0)) u();
    this.#waiters = [];
  }
}
