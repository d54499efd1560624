import type { Namespace } from 'etcd3';
import { linkSignals } from '../../core/abort.js';
import { InternalError, ServiceIdTakenError } from '../../core/errors.js';
import { cmp, op, rangeAt, txn, type KeyValue } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { retrying } from '../../core/retry.js';
import { ChangeWatch } from '../../core/wait.js';

const log = logger('service-registry');

/** What a registration writes, and which holder of its key it may displace. */
export interface Claim {
  client: Namespace;
  key: string;
  /** The value to write (built at each write: `registeredAt` may move). */
  value: () => string;
  /** Take over the key from another live instance. */
  replace: boolean;
  /** Wait for a holder that may be our own stale registration to expire. */
  waitForStale: boolean;
  /** Leases of our earlier registrations: a key on one of them is ours to take over. */
  oldLeases: readonly string[];
}

/**
 * Waits for `holder` (the key as another lease holds it) to go, bounded by
 * that lease's remaining TTL plus 2.5 s: true if it went (stale), false
 * if it is still there (its lease is kept alive: a live instance).
 */
async function expiredInTime(client: Namespace, key: string, holder: KeyValue, signal: AbortSignal): Promise<boolean> {
  if (holder.lease === '0') return false;
  const ttl = await retrying(() => client.leaseClient.leaseTimeToLive({ ID: holder.lease }), {
    signals: [signal],
  }).then(
    (r) => Number(r.TTL),
    () => 0,
  );
  if (ttl <= 0) return true;
  log('%s: held by lease %s (%d s left); waiting for it to expire', key, BigInt(holder.lease).toString(16), ttl);
  // etcd reports whole seconds, rounded down, and revokes expired leases on a timer of its own: allow for both.
  const bounded = linkSignals(signal, AbortSignal.timeout(ttl * 1000 + 2500));
  try {
    const target = { kind: 'key' as const, key: Buffer.from(key), createRevision: holder.createRevision };
    const watch = await ChangeWatch.open(client, target, bounded.signal, holder.modRevision + 1n);
    try {
      await watch.untilChanged(bounded.signal);
      return true;
    } finally {
      watch.close();
    }
  } catch (err) {
    signal.throwIfAborted();
    if ((err as Error)?.name === 'TimeoutError') return false;
    throw err;
  } finally {
    bounded.dispose();
  }
}

/**
 * Writes the registration key under lease `leaseId` if it is free (or ours
 * already: a retried Txn whose reply was lost, or an earlier lease of ours;
 * or when asked to replace); returns the revision of the write.
 */
export async function claimKey(claim: Claim, leaseId: string, signal: AbortSignal): Promise<bigint> {
  const { client, key } = claim;
  for (let attempt = 0; attempt < 100; attempt++) {
    const res = await retrying(
      () => txn(client, [cmp.create(key, '==', 0n)], [op.put(key, claim.value(), leaseId)], [op.range(key)]),
      { signals: [signal], maxElapsedMs: Infinity },
    );
    if (res.succeeded) return res.revision;
    const holder: KeyValue | undefined = rangeAt(res, 0).kvs[0];
    if (!holder) continue; // deleted in between
    // Our own Txn whose reply was lost and retried, or our own earlier lease's key, or asked to replace.
    const ours = holder.lease === leaseId;
    const oldLease = claim.oldLeases.includes(holder.lease);
    if (ours) return holder.modRevision;
    if (!ours && !oldLease && !claim.replace) {
      if (claim.waitForStale && (await expiredInTime(client, key, holder, signal))) continue;
      throw new ServiceIdTakenError(key, holder.lease);
    }
    const taken = await retrying(
      () => txn(client, [cmp.mod(key, '==', holder.modRevision)], [op.put(key, claim.value(), leaseId)]),
      { signals: [signal], maxElapsedMs: Infinity },
    );
    if (taken.succeeded) {
      log(
        '%s: took over the key from %s lease %s',
        key,
        oldLease ? 'our earlier' : "another instance's",
        holder.lease === '0' ? 'none' : BigInt(holder.lease).toString(16),
      );
      if (oldLease) void client.leaseClient.leaseRevoke({ ID: holder.lease }).catch(() => undefined);
      return taken.revision;
    }
  }
  throw new InternalError(`${key}: the key kept changing while registering`);
}

/**
 * Revokes a registration's lease, retrying transient failures (a member
 * failing over can stall a call for seconds) for as long as the lease could
 * live anyway. Never rejects: a lease not revoked expires by itself.
 */
export async function revokeLease(client: Namespace, leaseId: string, ttl: number, key: string): Promise<void> {
  const bound = Math.min(ttl * 1000, 2000);
  const hex = BigInt(leaseId).toString(16);
  try {
    await retrying(() => client.leaseClient.leaseRevoke({ ID: leaseId }, { deadline: Date.now() + bound }), {
      maxElapsedMs: ttl * 1000,
    });
    log('%s: revoked lease %s', key, hex);
  } catch (err) {
    // Not found: it expired already. Otherwise it expires by itself within the TTL.
    log('%s: revoke of lease %s failed: %s', key, hex, (err as Error).message);
  }
}
