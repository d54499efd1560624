/*
 * The message shapes of the point channels (see diagnostics.ts for their
 * names). Names are rendered as strings (UTF-8, or `0x<hex>`); durations
 * are milliseconds (`performance.now()` differences). Shapes are API
 * (docs/observability.md).
 */
import type { LockAcquireContext } from './tracing-contexts.js';

/** Every session message. */
export interface SessionMessage {
  /** The lease ID, decimal. */
  leaseId: string;
  /** The lease ID in lowercase hex (as in Mutex and Election keys). */
  leaseHex: string;
  /** The TTL etcd granted, in seconds. */
  ttl: number;
}

/**
 * `etcd-recipes:session:renewed-late`: a keepalive acknowledged with less than half the TTL left, or the first after a
 * reconnect.
 */
export interface SessionRenewedLateMessage extends SessionMessage {
  /** `'reconnect'` when the keepalive stream was re-opened before this ack, else `'late'`. */
  reason: 'late' | 'reconnect';
  /** What was left of the lease, by our clock, when the ack arrived (ms). */
  remainingMs: number;
}

/** `etcd-recipes:session:lost`. */
export interface SessionLostMessage extends SessionMessage {
  /** Why (a SessionExpiredError). */
  error: Error;
}

/** The recipes whose holds are locks or permits. */
export type LockRecipe = 'mutex' | 'rwmutex' | 'semaphore';

/** What is being locked: part of every lock message. */
export interface LockTarget {
  /** The recipe: `mutex`, `rwmutex` or `semaphore`. */
  recipe: LockRecipe;
  /** The lock's (or semaphore's) name. */
  name: string;
  /** RWMutex only. */
  mode?: 'read' | 'write';
  /** How many permits (1 for locks). */
  permits: number;
  /** The session's lease ID, decimal. */
  leaseId: string;
}

/** `etcd-recipes:lock:wait`: an acquire found others ahead and starts waiting. */
export interface LockWaitMessage extends LockTarget {
  /** The same object the acquire's tracing events carry. */
  context: LockAcquireContext;
  /** Our key, already in line. */
  key: string;
  /** Its create revision (the fencing token once held). */
  revision: bigint;
  /** The key we wait on (undefined when waiting on deletes under a prefix, as the first semaphore waiter does). */
  blocker: string | undefined;
}

/** `etcd-recipes:lock:released` (exactly one of released or lost ends a hold). */
export interface LockReleasedMessage extends LockTarget {
  /** The held key. */
  key: string;
  /** The held key's create revision. */
  fencingToken: bigint;
  /** How long it was held, in ms. */
  heldMs: number;
}

/**
 * `etcd-recipes:lock:lost`: the hold ended without a release (session lost or closed, or the key deleted by someone
 * else).
 */
export interface LockLostMessage extends LockReleasedMessage {
  /** Why the hold ended (the session's abort reason, or an error saying the key was deleted). */
  error: unknown;
}

/** Part of every election message. */
export interface ElectionTarget {
  /** The election's name. */
  name: string;
  /** Our campaign key, `<name>/<lease hex>`. */
  key: string;
  /** The session's lease ID, decimal. */
  leaseId: string;
}

/** `etcd-recipes:election:deposed`: leadership lost without resigning (session lost, key deleted). */
export interface ElectionDeposedMessage extends ElectionTarget {
  /** The term's revision (its fencing token). */
  revision: bigint;
  /** Why the term ended (the session's abort reason, or an error saying the key was deleted). */
  error: unknown;
}

/** `etcd-recipes:election:resigned`: a leader resigned (its key is deleted). */
export interface ElectionResignedMessage extends ElectionTarget {
  /** The term's revision (its fencing token). */
  revision: bigint;
}

/**
 * `etcd-recipes:election:leader`: an observer (`observe()`, `observeLeader`, runAsLeader's observer) saw a leader
 * change.
 */
export interface ElectionLeaderMessage {
  /** The election's name. */
  name: string;
  /** Undefined: nobody leads. `revision` is the leader key's create revision (its term's fencing token). */
  leader:
    | {
        /** The leader's key, `<name>/<lease hex>`. */
        key: string;
        /** The leader's proposal (its latest proclaimed value), as UTF-8. */
        value: string;
        /** The leader key's create revision (its term's fencing token). */
        revision: bigint;
        /** The leader key's mod revision (its latest campaign or proclaim). */
        modRevision: bigint;
        /** The leader's lease ID, decimal. */
        lease: string;
      }
    | undefined;
  /** The store revision of the change. */
  revision: bigint;
}

/** The queue recipes. */
export type QueueRecipe = 'queue' | 'priority-queue' | 'work-queue';

/** A work-queue job, in its messages. */
export interface JobMessage {
  /** The work queue's prefix. */
  name: string;
  /** The job ID. */
  id: string;
  /** The claim key. */
  key: string;
  /** The claim key's create revision. */
  fencingToken: bigint;
  /** How many times the job was claimed, this claim included. */
  attempts: number;
}

/** `etcd-recipes:work-queue:retry`: a claim took a job whose earlier claim ended without an ack (attempts ≥ 2). */
export type JobRetryMessage = JobMessage;

/** `etcd-recipes:work-queue:dead-letter`. */
export interface JobDeadLetterMessage extends JobMessage {
  /** `'max-attempts'`: claimed more than `maxAttempts` times; `'manual'`: `job.deadLetter()`. */
  reason: 'max-attempts' | 'manual';
}

/**
 * `etcd-recipes:watch:reconnect`: the shared watch stream broke and is re-opened (every watch resumes where it was).
 */
export interface WatchReconnectMessage {
  /** How many watches resume. */
  watches: number;
  /** The pause before re-opening, in ms. */
  delayMs: number;
  /** What broke the stream. */
  error: Error;
}

/** `etcd-recipes:watch:compacted`: a watch's start revision was compacted away; its owner re-reads. */
export interface WatchCompactedMessage {
  /** The watched key (or prefix). */
  key: string;
  /** True when the watch is on a prefix. */
  prefix: boolean;
  /** Where the watched range ends (not included), when it is a range that is not a prefix. */
  end?: string;
  /** The compaction revision etcd reported. */
  compactRevision: bigint;
}

/** `etcd-recipes:prefix-cache:resync`: a PrefixCache re-listed its prefix after a compaction. */
export interface PrefixCacheResyncMessage {
  /** The cached prefix. */
  prefix: string;
  /** The revision of the new list. */
  revision: bigint;
  /** The compaction revision that ended the watch. */
  compactRevision: bigint | undefined;
  /** How many changes the re-list found. */
  changes: number;
}

/** Every service-registration message. */
export interface ServiceMessage {
  /** The service name. */
  service: string;
  /** The instance ID. */
  id: string;
  /** The registration key. */
  key: string;
}

/** `etcd-recipes:service:lost`: the registration's lease was lost; it re-registers. */
export interface ServiceLostMessage extends ServiceMessage {
  /** The lost lease. */
  leaseId: string;
  /** Why (the session's loss error). */
  error: Error;
}

/** `etcd-recipes:service:re-registered`: registered again, under a new lease. */
export interface ServiceReregisteredMessage extends ServiceMessage {
  /** The new lease ID, decimal. */
  leaseId: string;
  /** The revision of the new registration write. */
  revision: bigint;
}
