import { delay, raceAbort } from './abort.js';
import { clientClosings } from './client.js';
import { isTransient } from './etcd-errors.js';

/*
 * Transient failures (a member restarting, a leader election, a dropped
 * connection) are retried inside the recipes so that a wait survives them;
 * everything else surfaces to the caller. Which errors are transient is
 * etcd-errors.ts's to say; how long to pause between attempts is said here only.
 */

/**
 * A doubling pause, the one retry schedule of the library: {@link retrying}
 * uses it, and so do the streams that re-open by themselves (watch hub,
 * keepalive) through {@link Backoff.schedule}.
 */
export class Backoff {
  readonly #firstMs: number;
  readonly #maxMs: number;
  #ms: number;
  #timer: NodeJS.Timeout | undefined;

  /**
   * @param firstMs - the first pause
   * @param maxMs - the longest pause; each pause doubles up to it
   */
  constructor(firstMs: number, maxMs: number) {
    this.#firstMs = this.#ms = Math.min(firstMs, maxMs);
    this.#maxMs = maxMs;
  }

  /** The pause to take now (ms); the one after it is twice as long, up to the maximum. */
  next(): number {
    const ms = this.#ms;
    this.#ms = Math.min(ms * 2, this.#maxMs);
    return ms;
  }

  /** After a success: the next pause is the first one again. */
  reset(): void {
    this.#ms = this.#firstMs;
  }

  /**
   * Runs `fn` after the next pause, replacing a run still pending, and returns
   * the pause. `holdProcess`: the timer keeps the process alive (someone awaits
   * what `fn` restores).
   */
  schedule(fn: () => void, holdProcess: boolean): number {
    this.cancel();
    const ms = this.next();
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      fn();
    }, ms);
    if (!holdProcess) this.#timer.unref();
    return ms;
  }

  /** Drops a pending {@link schedule}d run. */
  cancel(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

/** Options of {@link retrying}. */
export interface RetryOptions {
  /** Stop retrying (rethrowing the signal's reason) when any of these abort. */
  signals?: (AbortSignal | undefined)[];
  /** Give up and rethrow the last error after this long (ms). Default 30 000. */
  maxElapsedMs?: number;
  /** Called before each retry, for logging. */
  onRetry?: (err: unknown, attempt: number) => void;
  /** Which errors to retry; default {@link isTransient}. */
  retryIf?: (err: unknown) => boolean;
  /** The longest pause between attempts (ms). Default 1000. */
  maxBackoffMs?: number;
}

/**
 * Runs `fn` until it succeeds, retrying transient errors with jittered
 * exponential backoff (25 ms doubling to `maxBackoffMs`, 1 s by default),
 * bounded by `maxElapsedMs` and by the signals.
 */
export async function retrying<T>(fn: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const { signals = [], maxElapsedMs = 30_000, onRetry, retryIf = isTransient, maxBackoffMs = 1000 } = options;
  const started = performance.now();
  const backoff = new Backoff(25, maxBackoffMs);
  for (let attempt = 1; ; attempt++) {
    for (const s of signals) s?.throwIfAborted();
    try {
      return await fn();
    } catch (err) {
      const pause = backoff.next();
      if (!retryIf(err) || performance.now() - started + pause > maxElapsedMs) throw err;
      onRetry?.(err, attempt);
      await backoffSleep(pause / 2 + (Math.random() * pause) / 2, signals);
    }
  }
}

/**
 * A retry's pause: rejects when a signal aborts, and ends early when any
 * client of the process closes, so that the next attempt on a closed client
 * fails with CLOSED at once instead of after the pause.
 */
function backoffSleep(ms: number, signals: (AbortSignal | undefined)[]): Promise<void> {
  const woken = new AbortController();
  const wake = () => woken.abort();
  clientClosings().addEventListener('close', wake, { once: true });
  return delay(ms, ...signals, woken.signal)
    .catch((err: unknown) => {
      if (!woken.signal.aborted || signals.some((s) => s?.aborted)) throw err;
    })
    .finally(() => clientClosings().removeEventListener('close', wake));
}

/**
 * {@link retrying} stopped by `signal`, which also ends the wait for an
 * attempt already in flight: the call rejects with the signal's reason at
 * once (the attempt runs on; callers clean up after it, as with `raceAbort`).
 */
export function retryingUntil<T>(
  signal: AbortSignal | undefined,
  fn: () => Promise<T>,
  options: RetryOptions = {},
): Promise<T> {
  return raceAbort(retrying(fn, { ...options, signals: [signal, ...(options.signals ?? [])] }), signal);
}
