import { ClientClosedError, isRecoverableError } from 'etcd3';
import { isRecipeError, PermissionDeniedError } from './errors.js';
import type { Compare, Op } from './kv.js';

/*
 * The library's one reading of etcd's and the transport's errors: what to
 * retry, what means the lease, the client or the history is gone, and the
 * refusals a caller must act on, as typed errors. Matched by class name, gRPC
 * code and message rather than by `instanceof`, because the user's etcd3 may
 * be another copy than ours.
 */

/** gRPC status code PERMISSION_DENIED. */
const GRPC_PERMISSION_DENIED = 7;

/** True when etcd refused the call because the user's role does not grant the key (auth enabled). */
export function isPermissionDenied(err: unknown): boolean {
  if (!(err instanceof Error) || err instanceof PermissionDeniedError) return false;
  if (err.constructor?.name === 'EtcdPermissionDeniedError') return true;
  if ((err as { code?: unknown }).code === GRPC_PERMISSION_DENIED) return true;
  return /permission denied/i.test(err.message);
}

/**
 * `err` as the caller should see it: a {@link PermissionDeniedError} naming
 * `key` when etcd refused for lack of permission, else `err` itself.
 * `key` may be a function, so the key is only worked out on failure.
 */
export function classifyEtcdError(
  err: unknown,
  key: string | Buffer | undefined | (() => string | Buffer | undefined),
): unknown {
  if (!isPermissionDenied(err)) return err;
  const k = typeof key === 'function' ? key() : key;
  const name = k === undefined ? undefined : Buffer.isBuffer(k) ? k.toString('utf8') : k;
  return new PermissionDeniedError(
    name,
    `etcd refused access to ${name === undefined ? 'a key' : JSON.stringify(name)}: permission denied ` +
      "(auth is enabled and the user's role does not grant this key; " +
      'see docs/security.md for the role each recipe needs)',
    { cause: err },
  );
}

/**
 * The key to name when a Txn is refused: the first key it writes, else the
 * first it compares, else the first it reads. etcd does not say which key of
 * a Txn it refused; the written key is the recipe's own and the likeliest.
 */
export function txnKey(compares: readonly Compare[], success: readonly Op[]): string | Buffer | undefined {
  return success.find((o) => o.type !== 'range')?.key ?? compares[0]?.key ?? success[0]?.key;
}

/** True when the etcd3 client (ours or the user's copy) was closed: nothing will work on it any more. */
export function isClientClosed(err: unknown): boolean {
  if (err instanceof ClientClosedError || isRecipeError(err, 'CLOSED')) return true;
  return err instanceof Error && /client was already closed/i.test(err.message);
}

/** True when etcd refused a read or watch because its revision was compacted away. */
export function isCompacted(err: unknown): boolean {
  return err instanceof Error && /compacted/i.test(err.message);
}

/** True when a member was asked for a revision it has not applied yet (a lagging follower). */
export function isFutureRevision(err: unknown): boolean {
  return err instanceof Error && /future revision/i.test(err.message);
}

/**
 * True when etcd refused a whole Txn before applying any of it: permission
 * denied, more operations than --max-txn-ops, or a key written twice.
 */
export function isRefusedTxn(err: unknown): boolean {
  return isPermissionDenied(err) || (err instanceof Error && /too many operations|duplicate key/i.test(err.message));
}

/** True when etcd no longer has the lease a call named (expired or revoked). */
export function isLeaseNotFound(err: unknown): boolean {
  return err instanceof Error && /lease not found/i.test(err.message);
}

/** True when etcd refused or ended a call because its member has no leader (the `hasleader` metadata). */
export function hasNoLeader(err: unknown): boolean {
  return err instanceof Error && /no leader/i.test(err.message);
}

/** True for a failure after which the leader may be gone: a deadline, or etcd's own timeouts and leader errors. */
export function mayHaveLostLeader(err: unknown): boolean {
  return err instanceof Error && /deadline|timed out|leader changed|no leader/i.test(err.message);
}

/** True when the member a call went to may be unreachable or stuck: avoid it for a moment. */
export function isConnectionFault(err: unknown): boolean {
  return (
    err instanceof Error &&
    /deadline|unavailable|ECONNRE|No connection|not connected|stream removed|socket/i.test(err.message)
  );
}

/** True when a stream ended or was cancelled in the ordinary way (not worth a log line of its own). */
export function isStreamEnd(err: unknown): boolean {
  return err instanceof Error && /ended|cancel/i.test(err.message);
}

/** True when a failed first call's message says etcd refused who we are (user, password, role), not that it is away. */
export function isAuthRefusal(message: string): boolean {
  return (
    /auth|password|permission|user name|invalid/i.test(message) &&
    !/unavailable|deadline|no answer|connect/i.test(message)
  );
}

/** True when etcd refused to add a role that already exists (etcd creates `root`'s role by itself). */
export function isRoleTaken(err: unknown): boolean {
  return err instanceof Error && /role name already exists/i.test(err.message);
}

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
