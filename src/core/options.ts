/**
 * The options of every call that only waits or reads: one type for all of
 * them (the recipes' `LockOptions`, `DequeueOptions`, ... are its names in
 * their own docs).
 */
export interface WaitOptions {
  /**
   * Aborts the call: it then rejects with the signal's reason (for
   * `AbortSignal.timeout()`, Node's `TimeoutError`) and leaves no key of its
   * own behind.
   */
  signal?: AbortSignal;
}
