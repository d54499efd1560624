/**
 * Every error this library raises on purpose is a {@link RecipeError} with a
 * stable `code`. Match on `code` (or the `isRecipeError` guard) rather than on
 * `instanceof`: when both the ESM and the CJS build are loaded in one process
 * there are two copies of each class, and `instanceof` only knows one of them.
 */

/** The stable codes of {@link RecipeError}. */
export type RecipeErrorCode =
  | 'SESSION_EXPIRED'
  | 'LOCK_NOT_HELD'
  | 'NOT_LEADER'
  | 'NO_LEADER'
  | 'STM_CONFLICT'
  | 'INVALID_ARGUMENT'
  | 'TIMEOUT'
  | 'BARRIER_FULL';

/** Base class of every error raised by etcd-recipes. */
export class RecipeError extends Error {
  /** Stable machine-readable code; safe to switch on. */
  readonly code: RecipeErrorCode;

  /**
   * @param code - the stable error code
   * @param message - a human-readable explanation
   * @param options - standard `ErrorOptions` (e.g. `cause`)
   */
  constructor(code: RecipeErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** The session's lease expired, was revoked, or could not be kept alive in time. */
export class SessionExpiredError extends RecipeError {
  /** @param message - what was lost and why */
  constructor(message = 'session expired: the lease is gone or could not be kept alive', options?: ErrorOptions) {
    super('SESSION_EXPIRED', message, options);
  }
}

/** An operation needed a held lock (unlock, ifOwner, ...) and the lock is not held. */
export class LockNotHeldError extends RecipeError {
  /** @param message - which lock and which operation */
  constructor(message = 'the lock is not held', options?: ErrorOptions) {
    super('LOCK_NOT_HELD', message, options);
  }
}

/** A leader-only operation was attempted by a candidate that is not (or no longer) leader. */
export class NotLeaderError extends RecipeError {
  /** @param message - which election and which operation */
  constructor(message = 'not the leader', options?: ErrorOptions) {
    super('NOT_LEADER', message, options);
  }
}

/** The election currently has no leader. */
export class NoLeaderError extends RecipeError {
  /** @param message - which election */
  constructor(message = 'the election has no leader', options?: ErrorOptions) {
    super('NO_LEADER', message, options);
  }
}

/** An STM transaction kept conflicting until its retries ran out. */
export class STMConflictError extends RecipeError {
  /** Keys whose compares failed in the last attempt (best effort). */
  readonly keys: readonly string[];
  /** How many attempts were made. */
  readonly attempts: number;

  /**
   * @param keys - the conflicting keys of the last attempt
   * @param attempts - how many attempts ran
   */
  constructor(keys: readonly string[], attempts: number, options?: ErrorOptions) {
    super('STM_CONFLICT', `STM transaction still conflicting after ${attempts} attempt(s)` +
      (keys.length ? ` on ${keys.slice(0, 10).join(', ')}${keys.length > 10 ? ', ...' : ''}` : ''), options);
    this.keys = keys;
    this.attempts = attempts;
  }
}

/** A caller passed a bad argument; raised before anything is written to etcd. */
export class InvalidArgumentError extends RecipeError {
  /** The name of the offending argument, e.g. `ttl` or `options.signal`. */
  readonly argument: string;

  /**
   * @param argument - the argument's name
   * @param message - what was wrong and what is accepted
   */
  constructor(argument: string, message: string, options?: ErrorOptions) {
    super('INVALID_ARGUMENT', `invalid argument "${argument}": ${message}`, options);
    this.argument = argument;
  }
}

/** A bounded wait ran out of time. */
export class TimeoutError extends RecipeError {
  /** @param message - what timed out */
  constructor(message = 'timed out', options?: ErrorOptions) {
    super('TIMEOUT', message, options);
  }
}

/**
 * A double barrier already has its `count` participants, or a round is in
 * progress (Go's `ErrTooManyClients`). Nothing was left behind; try again
 * once the round is over.
 */
export class BarrierFullError extends RecipeError {
  /** @param message - which barrier and why */
  constructor(message = 'the barrier is full', options?: ErrorOptions) {
    super('BARRIER_FULL', message, options);
  }
}

/**
 * True when `err` is a {@link RecipeError} (optionally with the given code).
 * Works across the ESM and CJS copies of this package.
 */
export function isRecipeError(err: unknown, code?: RecipeErrorCode): err is RecipeError {
  if (typeof err !== 'object' || err === null) return false;
  const c = (err as { code?: unknown }).code;
  const known = c === 'SESSION_EXPIRED' || c === 'LOCK_NOT_HELD' || c === 'NOT_LEADER' || c === 'NO_LEADER' ||
    c === 'STM_CONFLICT' || c === 'INVALID_ARGUMENT' || c === 'TIMEOUT' || c === 'BARRIER_FULL';
  return known && err instanceof Error && (code === undefined || c === code);
}

/**
 * Builds an error without capturing a stack trace. For abort reasons made on
 * hot paths (every release of every hold), where the stack is never useful.
 */
export function withoutStack<E extends Error>(make: () => E): E {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return make();
  } finally {
    Error.stackTraceLimit = limit;
  }
}
