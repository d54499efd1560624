import { isRecoverableError } from 'etcd3';
import { delay, raceAbort } from './abort.js';
import { clientClosings } from './client.js';
import { isRecipeError } from './errors.js';
import { isPermissionDenied } from './etcd-errors.js';

/*
 * Transient failures (a member restarting, a leader election, a dropped
 * connection) are retried inside the recipes so that a wait survives them;
 * everything else surfaces to the caller.
 */

const transientMessage = new RegExp(
  [
    'leader changed|no leader|request timed out|timed out|unavailable',
    'ECONNREFUSED|ECONNRESET|EPIPE|stream ended|stream removed|circuit|not connected|too many requests',
    'connection (closed|reset|refused)|No connection established|Call cancelled|Deadline exceeded',
    'socket hang up|GOAWAY',
  ].join('|'),
  'i',
);

/** True for failures that may go away by themselves: retry these. */
export function isTransient(err: unknown): boolean {
  if (isRecipeError(err) || isPermissionDenied(err)) return false;
  if (!(err instanceof Error)) return false;
  if (err.name === 'AbortError' || err.name === 'TimeoutError') return false;
  try {
    if (isRecoverableError(err)) return true;
  } catch {
    // isRecoverableError uses the `in` operator, which is safe on Errors; be defensive anyway.
  }
  if (
    err.name === 'BrokenCircuitError' ||
    err.name === 'MemberAvoidedError' ||
    err.constructor?.name === 'BrokenCircuitError'
  )
    return true;
  return transientMessage.test(err.message);
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
  let backoff = Math.min(25, maxBackoffMs);
  for (let attempt = 1; ; attempt++) {
    for (const s of signals) s?.throwIfAborted();
    try {
      return await fn();
    } catch (err) {
      if (!retryIf(err) || performance.now() - started + backoff > maxElapsedMs) throw err;
      onRetry?.(err, attempt);
      await backoffSleep(backoff / 2 + (Math.random() * backoff) / 2, signals);
      backoff = Math.min(backoff * 2, maxBackoffMs);
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
