/*
 * The context objects of the tracing channels (see diagnostics.ts for their
 * names). Shapes are API (docs/observability.md).
 */
import type { ElectionTarget, JobMessage, LockTarget, QueueRecipe } from './diagnostics-messages.js';

/** The context of `etcd-recipes:lock` (Mutex, RWMutex and Semaphore acquires; the `try` forms too). */
export interface LockAcquireContext extends LockTarget {
  /** False for `tryLock` / `tryAcquire`: never waits for another holder. */
  wait: boolean;
  /** Set on `asyncEnd` when the call resolved. */
  result?: LockAcquireResult;
  /** Set on `error` when it rejected (aborted, session lost...). */
  error?: unknown;
}

/** `context.result` of `etcd-recipes:lock`. */
export interface LockAcquireResult {
  /** False only for a `try` form that found the lock taken (it left no key behind). */
  acquired: boolean;
  /** The held key (when acquired). */
  key?: string;
  /** Its create revision (when acquired). */
  fencingToken?: bigint;
  /** True if the call queued behind another holder. */
  waited: boolean;
  /**
   * Set (true) when a release in this process handed the lock over: the
   * waiter held it without a watch event or a read of its own.
   */
  handedOver?: true;
  /** From the call to the outcome, in ms. */
  waitMs: number;
}

/**
 * The context of `etcd-recipes:multi-lock` (acquireAll, withLocks); each lock also has its own `etcd-recipes:lock`
 * events.
 */
export interface MultiLockAcquireContext {
  /** The names, in the order they are taken. */
  names: string[];
  /** The session's lease ID, decimal. */
  leaseId: string;
  /** Set on `asyncEnd` when every lock was taken. */
  result?: {
    /** The held keys, in `names` order. */
    keys: string[];
    /** Their create revisions, in the same order. */
    fencingTokens: bigint[];
    /** From the call to the outcome, in ms. */
    waitMs: number;
  };
  /** Set on `error` when it rejected. */
  error?: unknown;
}

/** The context of `etcd-recipes:election:campaign`. `asyncEnd` with a result: elected. */
export interface CampaignContext extends ElectionTarget {
  /** Set on `asyncEnd` when elected. */
  result?: {
    /** The term's revision (our key's create revision, its fencing token). */
    revision: bigint;
    /** From the call to the outcome, in ms. */
    waitMs: number;
  };
  /** Set on `error` when it rejected (aborted, session lost...). */
  error?: unknown;
}

/** The context of `etcd-recipes:stm` (one `runSTM` call). */
export interface STMContext {
  /** The isolation level (`serializable-snapshot`, `serializable`, `repeatable-reads` or `read-committed`). */
  isolation: string;
  /** The retries allowed. */
  retries: number;
  /** On commit. */
  result?: {
    /** How many attempts it took, the committing one included. */
    attempts: number;
  };
  /** Give-up is an STMConflictError (code `STM_CONFLICT`, with `attempts` and `keys`). */
  error?: unknown;
}

/** The context of `etcd-recipes:stm:attempt` (one run of the function and its commit). */
export interface STMAttemptContext {
  /** 1 for the first. */
  attempt: number;
  /** The isolation level of the run. */
  isolation: string;
  /** `'conflict'`: the commit's compares failed; `conflictKeys` names the keys (best effort). */
  result?: {
    /** Whether the commit succeeded (`'commit'`) or its compares failed (`'conflict'`). */
    outcome: 'commit' | 'conflict';
    /** The keys whose compares failed (best effort; empty on commit). */
    conflictKeys: string[];
  };
  /** The function threw, a read failed, or the attempt restarts (its snapshot revision was compacted). */
  error?: unknown;
}

/** The context of `etcd-recipes:queue:enqueue` (Queue.enqueue, PriorityQueue.enqueue, WorkQueue.add). */
export interface EnqueueContext {
  /** The recipe: `queue`, `priority-queue` or `work-queue`. */
  recipe: QueueRecipe;
  /** The queue's name (the work queue's prefix). */
  name: string;
  /** PriorityQueue and WorkQueue. */
  priority?: number;
  /** `id`: the WorkQueue job ID. */
  result?: {
    /** The key written. */
    key: string;
    /** The WorkQueue job ID. */
    id?: string;
  };
  /** Set on `error` when it rejected. */
  error?: unknown;
}

/** The context of `etcd-recipes:queue:dequeue` (Queue and PriorityQueue). */
export interface DequeueContext {
  /** The recipe: `queue` or `priority-queue`. */
  recipe: 'queue' | 'priority-queue';
  /** The queue's name. */
  name: string;
  /** Set on `asyncEnd` when an item was taken. */
  result?: {
    /** The key of the item taken. */
    key: string;
    /** From the call to the outcome, in ms. */
    waitMs: number;
  };
  /** Set on `error` when it rejected (aborted...). */
  error?: unknown;
}

/** The context of `etcd-recipes:work-queue:claim`. */
export interface JobClaimContext {
  /** The work queue's prefix. */
  name: string;
  /** The claiming session's lease ID, decimal. */
  leaseId: string;
  /** Set on `asyncEnd`: the claimed job and the wait. */
  result?: JobMessage & {
    /** From the call to the outcome, in ms. */
    waitMs: number;
  };
  /** Set on `error` when it rejected (aborted, session lost...). */
  error?: unknown;
}

/** The context of `etcd-recipes:work-queue:ack`. */
export interface JobAckContext extends JobMessage {
  /** Set (to `{}`) on `asyncEnd` when the ack succeeded. */
  result?: Record<string, never>;
  /** A LockNotHeldError when the claim was lost. */
  error?: unknown;
}
