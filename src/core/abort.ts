/*
 * AbortSignal plumbing used by every blocking call. We avoid AbortSignal.any()
 * for long-lived sources (a session's signal lives for hours, and Node 20's
 * implementation retains dependants): `linkSignals` removes its listeners
 * when the caller disposes it.
 */

/** The error a call rejects with when `signal` aborted: the signal's reason. */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/** A controller aborted when any source aborts; `dispose()` detaches it from the sources. */
export interface LinkedSignal {
  readonly signal: AbortSignal;
  abort(reason?: unknown): void;
  dispose(): void;
}

/** Links `sources` (undefined ones are skipped) into one signal. */
export function linkSignals(...sources: (AbortSignal | undefined)[]): LinkedSignal {
  const controller = new AbortController();
  const cleanups: (() => void)[] = [];
  const dispose = () => {
    for (const c of cleanups.splice(0)) c();
  };
  for (const s of sources) {
    if (!s) continue;
    if (s.aborted) {
      controller.abort(abortReason(s));
      break;
    }
    const onAbort = () => {
      controller.abort(abortReason(s));
      dispose();
    };
    s.addEventListener('abort', onAbort, { once: true });
    cleanups.push(() => s.removeEventListener('abort', onAbort));
  }
  if (controller.signal.aborted) dispose();
  return {
    signal: controller.signal,
    abort: (r) => {
      controller.abort(r);
      dispose();
    },
    dispose,
  };
}

/**
 * One signal for several sources, like {@link linkSignals}, but without a new
 * AbortController when only one source is defined (the common case of a call
 * without its own signal): that source is used as is.
 */
export function combineSignals(...sources: (AbortSignal | undefined)[]): { signal: AbortSignal; dispose(): void } {
  const defined = sources.filter((s): s is AbortSignal => !!s);
  if (defined.length === 1) return { signal: defined[0]!, dispose: () => undefined };
  return linkSignals(...defined);
}

/**
 * Settles like `promise`, or rejects with the reason of the first signal that
 * aborts first. The promise keeps running; callers clean up after it.
 */
export function raceAbort<T>(promise: Promise<T>, ...signals: (AbortSignal | undefined)[]): Promise<T> {
  const live = signals.filter((s): s is AbortSignal => !!s);
  for (const s of live)
    if (s.aborted) {
      promise.catch(() => undefined);
      return Promise.reject(abortReason(s));
    }
  if (live.length === 0) return promise;
  return new Promise<T>((resolve, reject) => {
    const cleanups: (() => void)[] = [];
    const done = () => {
      for (const c of cleanups.splice(0)) c();
    };
    for (const s of live) {
      const onAbort = () => {
        done();
        reject(abortReason(s));
      };
      s.addEventListener('abort', onAbort, { once: true });
      cleanups.push(() => s.removeEventListener('abort', onAbort));
    }
    promise.then(
      (v) => {
        done();
        resolve(v);
      },
      (e) => {
        done();
        reject(e);
      },
    );
  });
}

/**
 * Waits `ms` milliseconds, or rejects when a signal aborts (clearing the
 * timer). The timer keeps the process alive: a caller is awaiting it, and a
 * process must not exit in the middle of a retry's backoff.
 */
export function delay(ms: number, ...signals: (AbortSignal | undefined)[]): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const slept = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return raceAbort(slept, ...signals).finally(() => clearTimeout(timer));
}

/**
 * Resolves at the first call of the wake function that `arm` is given, or
 * rejects with the signal's reason if it aborts first. `arm` stores the wake
 * function where the event source calls it; it is called again with
 * `undefined` when the wait ends either way.
 */
export function untilWoken(signal: AbortSignal, arm: (wake: (() => void) | undefined) => void): Promise<void> {
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      arm(undefined);
      reject(abortReason(signal));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    arm(() => {
      arm(undefined);
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}
