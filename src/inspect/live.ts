import type { Namespace } from 'etcd3';
import { logger } from '../core/log.js';
import { openWatch, type WatchHandle } from '../core/watch-hub.js';

const log = logger('inspect');

/*
 * Live views (the dashboard, `status --watch`): watch the keys, and on any
 * change re-read the whole picture. Re-reading beats applying events here:
 * the picture depends on order across keys and on lease TTLs, and a fresh
 * read is a handful of ranges. Changes are coalesced: one read in flight at
 * a time, and every burst of events during it costs one more read.
 */

/** Options of {@link LiveView}. */
export interface LiveViewOptions {
  /**
   * Re-read at least this often (ms), for lease TTLs, which change without events.
   * Default 5000; 0: only on changes.
   */
  periodMs?: number;
  /** Wait this long (ms) after an event before re-reading, to take a burst in one read. Default 50. */
  settleMs?: number;
}

/**
 * @internal Calls `read` now and after every change under `prefixes` (and
 * every `periodMs`), one call at a time, handing each result to `onResult`
 * and each failure to `onError`. Only reads etcd.
 */
export class LiveView<T> {
  readonly #client: Namespace;
  readonly #prefixes: Buffer[];
  readonly #read: () => Promise<T>;
  readonly #onResult: (value: T) => void;
  readonly #onError: (err: unknown) => void;
  readonly #periodMs: number;
  readonly #settleMs: number;
  readonly #watches: WatchHandle[] = [];
  #closed = false;
  #running = false;
  #dirty = false;
  #timer: NodeJS.Timeout | undefined;
  #period: NodeJS.Timeout | undefined;

  constructor(
    client: Namespace,
    prefixes: Buffer[],
    read: () => Promise<T>,
    onResult: (value: T) => void,
    onError: (err: unknown) => void,
    options: LiveViewOptions = {},
  ) {
    this.#client = client;
    this.#prefixes = prefixes;
    this.#read = read;
    this.#onResult = onResult;
    this.#onError = onError;
    this.#periodMs = options.periodMs ?? 5000;
    this.#settleMs = options.settleMs ?? 50;
  }

  /**
   * Reads at once (so a view shows something even while etcd is slow to
   * create watches), opens the watches, then reads again: a change between
   * the first read and the watches is not missed.
   */
  async start(): Promise<void> {
    this.poke(0);
    if (this.#periodMs > 0) this.#period = setInterval(() => this.poke(0), this.#periodMs);
    for (const key of this.#prefixes) await this.#watch(key);
    this.poke(0);
  }

  async #watch(key: Buffer): Promise<void> {
    if (this.#closed) return;
    const handle = await openWatch(
      this.#client,
      { key, prefix: true },
      {
        onEvents: () => this.poke(this.#settleMs),
        onEnd: (err) => {
          // Compacted or cancelled by the server: we may have missed events. Watch again from now and re-read.
          const i = this.#watches.indexOf(handle);
          if (i >= 0) this.#watches.splice(i, 1);
          if (this.#closed) return;
          log('live view: watch ended (%s), re-opening', err.message);
          this.#watch(key).then(
            () => this.poke(0),
            (e: unknown) => this.#onError(e),
          );
        },
      },
    );
    if (this.#closed) handle.close();
    else this.#watches.push(handle);
  }

  /** Asks for a fresh read in `delayMs` (coalesced with any pending one). */
  poke(delayMs: number): void {
    if (this.#closed) return;
    this.#dirty = true;
    if (this.#running || this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#run();
    }, delayMs);
  }

  async #run(): Promise<void> {
    if (this.#closed || this.#running) return;
    this.#running = true;
    this.#dirty = false;
    try {
      const value = await this.#read();
      if (!this.#closed) this.#onResult(value);
    } catch (err) {
      if (!this.#closed) this.#onError(err);
    } finally {
      this.#running = false;
    }
    if (this.#dirty) this.poke(0);
  }

  /** Stops watching and reading. Idempotent. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    clearInterval(this.#period);
    for (const w of this.#watches.splice(0)) w.close();
  }
}
