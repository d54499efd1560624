/**
 * Every error this library raises on purpose is a {@link RecipeError} with a
 * stable `code`. Match on `code` (or the `isRecipeError` guard) rather than on
 * `instanceof`: when both the ESM and the CJS build are loaded in one process
 * there are two copies of each class, and `instanceof` only knows one of them.
 */

/**
 * Every stable code of {@link RecipeError}, declared once: the type, the
 * runtime check and the README's list (tested against it) come from here.
 */
export const RECIPE_ERROR_CODES = [
  'SESSION_EXPIRED',
  'LOCK_NOT_HELD',
  'NOT_LEADER',
  'STM_CONFLICT',
  'INVALID_ARGUMENT',
  'BARRIER_FULL',
  'SERVICE_ID_TAKEN',
  'PERMISSION_DENIED',
  'CLOSED',
  'OUTCOME_UNKNOWN',
  'INTERNAL',
] as const;

/** The stable codes of {@link RecipeError}. */
export type RecipeErrorCode = (typeof RECIPE_ERROR_CODES)[number];

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
    super(
      'STM_CONFLICT',
      `STM transaction still conflicting after ${attempts} attempt(s)` +
        (keys.length ? ` on ${keys.slice(0, 10).join(', ')}${keys.length > 10 ? ', ...' : ''}` : ''),
      options,
    );
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
 * Registering a service ID that another live instance holds. Pass
 * `{ replace: true }` to take it over.
 */
export class ServiceIdTakenError extends RecipeError {
  /** The key in question. */
  readonly key: string;
  /** The lease ID (decimal string) of the instance holding it; '0' if none. */
  readonly holderLeaseId: string;

  /**
   * @param key - the registration key
   * @param holderLeaseId - the lease of its current holder
   */
  constructor(key: string, holderLeaseId: string, options?: ErrorOptions) {
    super(
      'SERVICE_ID_TAKEN',
      `${key} is already registered by another live instance ` +
        `(lease ${holderLeaseId === '0' ? 'none' : BigInt(holderLeaseId).toString(16)}); ` +
        'pass { replace: true } to take it over',
      options,
    );
    this.key = key;
    this.holderLeaseId = holderLeaseId;
  }
}

/**
 * The client (or the library, through `closeRecipes`) was closed while the
 * call was pending or before it started. Nothing more will be attempted.
 */
export class ClosedError extends RecipeError {
  /** @param message - what was pending */
  constructor(message = 'the etcd client was closed', options?: ErrorOptions) {
    super('CLOSED', message, options);
  }
}

/**
 * etcd refused the call for lack of permission (auth enabled, the user's
 * role does not grant the key). Never retried.
 */
export class PermissionDeniedError extends RecipeError {
  /** The key (as the recipe names it) the refused call touched, when known. */
  readonly key: string | undefined;

  /**
   * @param key - the key the call touched, if known
   * @param message - what was refused
   */
  constructor(key: string | undefined, message: string, options?: ErrorOptions) {
    super('PERMISSION_DENIED', message, options);
    this.key = key;
  }
}

/**
 * A write's reply was lost and etcd's state no longer proves whether it
 * landed (for example the history it would be read from was compacted).
 * The message names what may or may not have happened. The library never
 * guesses: decide from your own state whether to repeat the call.
 */
export class OutcomeUnknownError extends RecipeError {
  /** @param message - what may or may not have happened */
  constructor(message: string, options?: ErrorOptions) {
    super('OUTCOME_UNKNOWN', message, options);
  }
}

/**
 * The library met a reply or a state it does not expect and gave up: for
 * example etcd cancelled a watch for a reason it did not give before, or keys
 * changed by hand kept a write from ever succeeding. The message says what;
 * please report it if it recurs.
 */
export class InternalError extends RecipeError {
  /** @param message - what was unexpected */
  constructor(message: string, options?: ErrorOptions) {
    super('INTERNAL', message, options);
  }
}

/** The error class behind each code, for {@link isRecipeError}'s narrowing. */
export interface RecipeErrorByCode {
  /** {@link SessionExpiredError} */
  SESSION_EXPIRED: SessionExpiredError;
  /** {@link LockNotHeldError} */
  LOCK_NOT_HELD: LockNotHeldError;
  /** {@link NotLeaderError} */
  NOT_LEADER: NotLeaderError;
  /** {@link STMConflictError} */
  STM_CONFLICT: STMConflictError;
  /** {@link InvalidArgumentError} */
  INVALID_ARGUMENT: InvalidArgumentError;
  /** {@link BarrierFullError} */
  BARRIER_FULL: BarrierFullError;
  /** {@link ServiceIdTakenError} */
  SERVICE_ID_TAKEN: ServiceIdTakenError;
  /** {@link PermissionDeniedError} */
  PERMISSION_DENIED: PermissionDeniedError;
  /** {@link ClosedError} */
  CLOSED: ClosedError;
  /** {@link OutcomeUnknownError} */
  OUTCOME_UNKNOWN: OutcomeUnknownError;
  /** {@link InternalError} */
  INTERNAL: InternalError;
}

const codes: ReadonlySet<string> = new Set<string>(RECIPE_ERROR_CODES);

/**
 * True when `err` is a {@link RecipeError} (optionally with the given code,
 * which narrows to that error's class, e.g. `STMConflictError` with its
 * `keys`). Works across the ESM and CJS copies of this package.
 */
export function isRecipeError<C extends RecipeErrorCode>(err: unknown, code: C): err is RecipeErrorByCode[C];
export function isRecipeError(err: unknown): err is RecipeError;
export function isRecipeError(err: unknown, code?: RecipeErrorCode): boolean {
  if (!(err instanceof Error)) return false;
  const c = (err as { code?: unknown }).code;
  return typeof c === 'string' && codes.has(c) && (code === undefined || c === code);
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
