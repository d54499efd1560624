import { abortReason } from './abort.js';

/** Options of an {@link AsyncQueue}. */
export interface AsyncQueueOptions<T> {
  /** Items kept for the consumer; beyond that the oldest is dropped (default unbounded: keyed queues are). */
  max?: number;
  /**
   * Merges a pending item with a new one pushed under the same key; undefined
   * drops both. The merged item moves to the end of the queue.
   */
  merge?: (pending: T, next: T) => T | undefined;
  /** Ends the queue: by default the iteration then rejects with the signal's reason; `endOnAbort` ends it normally. */
  signal?: AbortSignal;
  /** See `signal`. */
  endOnAbort?: boolean;
  /** Called once when the queue ends, however it ends (to unsubscribe its producer). */
  onEnd?: () => void;
}

type Waiter<T> = { resolve: (r: IteratorResult<T>) => void; reject: (err: unknown) => void };

/**
 * The one bounded, single-consumer async iterator of the library: a producer
 * pushes, a `for await` loop takes. Memory stays bounded by `max` or by
 * merging items of one key. Serves Election.observe, PrefixCache.changes and
 * ServiceDiscovery.lists.
 */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  readonly #items = new Map<unknown, T>();
  readonly #max: number;
  readonly #merge: ((pending: T, next: T) => T | undefined) | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #onEnd: (() => void) | undefined;
  readonly #onAbort: () => void;
  #waiter: Waiter<T> | undefined;
  #seq = 0;
  #ended = false;
  #failure: { err: unknown } | undefined;

  constructor(options: AsyncQueueOptions<T> = {}) {
    this.#max = options.max ?? Number.POSITIVE_INFINITY;
    this.#merge = options.merge;
    this.#onEnd = options.onEnd;
    const signal = options.signal;
    this.#signal = signal;
    this.#onAbort = options.endOnAbort ? () => this.close() : () => this.fail(abortReason(signal!));
    if (signal?.aborted) this.#onAbort();
    else signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** True once no more items will be pushed. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Queues `item` (under `key`: merged with a pending item of the same key). */
  push(item: T, key: unknown = this.#seq++): void {
    if (this.#ended) return;
    const waiter = this.#waiter;
    if (waiter && this.#items.size === 0) {
      this.#waiter = undefined;
      waiter.resolve({ value: item, done: false });
      return;
    }
    const pending = this.#items.get(key);
    if (pending !== undefined) {
      this.#items.delete(key);
      const merged = this.#merge ? this.#merge(pending, item) : item;
      if (merged === undefined) return;
      item = merged;
    }
    this.#items.set(key, item);
    if (this.#items.size > this.#max) this.#items.delete(this.#items.keys().next().value);
  }

  /** No more items: the consumer takes what is pending, then the iteration is done. */
  finish(): void {
    this.#end();
    this.#settle();
  }

  /** Ends now, dropping what is pending. */
  close(): void {
    this.#items.clear();
    this.finish();
  }

  /** Ends now: the pending (or next) `next()` rejects with `err`, later ones are done. */
  fail(err: unknown): void {
    if (this.#ended) return;
    this.#failure = { err };
    this.close();
  }

  next(): Promise<IteratorResult<T>> {
    for (const [key, value] of this.#items) {
      this.#items.delete(key);
      return Promise.resolve({ value, done: false });
    }
    const failure = this.#failure;
    this.#failure = undefined;
    if (failure) return Promise.reject(failure.err);
    if (this.#ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  /** Stops the iteration (`break` calls it). */
  return(): Promise<IteratorResult<T>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#onEnd?.();
  }

  /** Wakes a waiting consumer once nothing is pending any more. */
  #settle(): void {
    const waiter = this.#waiter;
    if (!waiter || this.#items.size > 0) return;
    this.#waiter = undefined;
    const failure = this.#failure;
    this.#failure = undefined;
    if (failure) waiter.reject(failure.err);
    else waiter.resolve({ value: undefined, done: true });
  }
}
