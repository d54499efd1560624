import type * as Msg from './diagnostics-messages.js';
import type * as Ctx from './tracing-contexts.js';

/*
 * Every `node:diagnostics_channel` channel the library publishes on, with its
 * message shape, declared once: this is the list. Names and shapes are API
 * (docs/observability.md).
 *
 * Channels are process-wide by name, so the ESM and the CJS copy of the
 * library publish to the same subscribers.
 */

// ---------------------------------------------------------------------------
// Names

/** The point channels (one message per event), by event. */
export const DIAGNOSTICS_CHANNELS = {
  /** A Session started (lease granted or adopted): {@link SessionMessage}. */
  sessionCreated: 'etcd-recipes:session:created',
  /** A keepalive was acknowledged late, or first after a reconnect: {@link SessionRenewedLateMessage}. */
  sessionRenewedLate: 'etcd-recipes:session:renewed-late',
  /** A session's lease was lost: {@link SessionLostMessage}. */
  sessionLost: 'etcd-recipes:session:lost',
  /** A session's `close()` finished: {@link SessionMessage}. */
  sessionClosed: 'etcd-recipes:session:closed',
  /** An acquire found others ahead and starts waiting: {@link LockWaitMessage}. */
  lockWait: 'etcd-recipes:lock:wait',
  /** A lock or permit hold was released: {@link LockReleasedMessage}. */
  lockReleased: 'etcd-recipes:lock:released',
  /** A hold ended without a release: {@link LockLostMessage}. */
  lockLost: 'etcd-recipes:lock:lost',
  /** Leadership ended without a resign: {@link ElectionDeposedMessage}. */
  electionDeposed: 'etcd-recipes:election:deposed',
  /** A leader resigned: {@link ElectionResignedMessage}. */
  electionResigned: 'etcd-recipes:election:resigned',
  /** An observer saw a leader change: {@link ElectionLeaderMessage}. */
  electionLeader: 'etcd-recipes:election:leader',
  /** A work-queue claim was given back (`job.release()`): {@link JobMessage}. */
  workQueueRelease: 'etcd-recipes:work-queue:release',
  /** A job was claimed again after a claim ended without an ack: {@link JobRetryMessage}. */
  workQueueRetry: 'etcd-recipes:work-queue:retry',
  /** A job moved to the dead letters: {@link JobDeadLetterMessage}. */
  workQueueDeadLetter: 'etcd-recipes:work-queue:dead-letter',
  /** The shared watch stream broke and is re-opened: {@link WatchReconnectMessage}. */
  watchReconnect: 'etcd-recipes:watch:reconnect',
  /** A watch's start revision was compacted away: {@link WatchCompactedMessage}. */
  watchCompacted: 'etcd-recipes:watch:compacted',
  /** A PrefixCache re-listed its prefix after a compaction: {@link PrefixCacheResyncMessage}. */
  prefixCacheResync: 'etcd-recipes:prefix-cache:resync',
  /** A service registration's lease was lost: {@link ServiceLostMessage}. */
  serviceLost: 'etcd-recipes:service:lost',
  /** A service registered again under a new lease: {@link ServiceReregisteredMessage}. */
  serviceReregistered: 'etcd-recipes:service:re-registered',
} as const;

/**
 * The tracing channels (an operation with a start and an end), by operation.
 * Node names their five channels `tracing:<name>:start`, `:end`,
 * `:asyncStart`, `:asyncEnd` and `:error`; every operation here is
 * asynchronous, so its outcome is on `asyncEnd` (`context.result`) or on
 * `error` then `asyncEnd` (`context.error`).
 */
export const TRACING_CHANNELS = {
  /** Mutex, RWMutex and Semaphore acquires (the `try` forms too): {@link LockAcquireContext}. */
  lock: 'etcd-recipes:lock',
  /** `acquireAll` / `withLocks`: {@link MultiLockAcquireContext}. */
  multiLock: 'etcd-recipes:multi-lock',
  /** `Election.campaign` (and so `runAsLeader`): {@link CampaignContext}. */
  campaign: 'etcd-recipes:election:campaign',
  /** One `runSTM` call: {@link STMContext}. */
  stm: 'etcd-recipes:stm',
  /** One STM attempt (the function and its commit): {@link STMAttemptContext}. */
  stmAttempt: 'etcd-recipes:stm:attempt',
  /** Queue.enqueue, PriorityQueue.enqueue and WorkQueue.add: {@link EnqueueContext}. */
  enqueue: 'etcd-recipes:queue:enqueue',
  /** Queue and PriorityQueue `dequeue`: {@link DequeueContext}. */
  dequeue: 'etcd-recipes:queue:dequeue',
  /** `WorkQueue.claim`: {@link JobClaimContext}. */
  claim: 'etcd-recipes:work-queue:claim',
  /** `job.ack()`: {@link JobAckContext}. */
  ack: 'etcd-recipes:work-queue:ack',
} as const;

// ---------------------------------------------------------------------------
// Each channel's message: the shapes are in diagnostics-messages.ts and tracing-contexts.ts.

/** The message of each point channel, by name. */
export interface DiagnosticsMessages {
  /** The message of `etcd-recipes:session:created`. */
  'etcd-recipes:session:created': Msg.SessionMessage;
  /** The message of `etcd-recipes:session:renewed-late`. */
  'etcd-recipes:session:renewed-late': Msg.SessionRenewedLateMessage;
  /** The message of `etcd-recipes:session:lost`. */
  'etcd-recipes:session:lost': Msg.SessionLostMessage;
  /** The message of `etcd-recipes:session:closed`. */
  'etcd-recipes:session:closed': Msg.SessionMessage;
  /** The message of `etcd-recipes:lock:wait`. */
  'etcd-recipes:lock:wait': Msg.LockWaitMessage;
  /** The message of `etcd-recipes:lock:released`. */
  'etcd-recipes:lock:released': Msg.LockReleasedMessage;
  /** The message of `etcd-recipes:lock:lost`. */
  'etcd-recipes:lock:lost': Msg.LockLostMessage;
  /** The message of `etcd-recipes:election:deposed`. */
  'etcd-recipes:election:deposed': Msg.ElectionDeposedMessage;
  /** The message of `etcd-recipes:election:resigned`. */
  'etcd-recipes:election:resigned': Msg.ElectionResignedMessage;
  /** The message of `etcd-recipes:election:leader`. */
  'etcd-recipes:election:leader': Msg.ElectionLeaderMessage;
  /** The message of `etcd-recipes:work-queue:release`. */
  'etcd-recipes:work-queue:release': Msg.JobMessage;
  /** The message of `etcd-recipes:work-queue:retry`. */
  'etcd-recipes:work-queue:retry': Msg.JobRetryMessage;
  /** The message of `etcd-recipes:work-queue:dead-letter`. */
  'etcd-recipes:work-queue:dead-letter': Msg.JobDeadLetterMessage;
  /** The message of `etcd-recipes:watch:reconnect`. */
  'etcd-recipes:watch:reconnect': Msg.WatchReconnectMessage;
  /** The message of `etcd-recipes:watch:compacted`. */
  'etcd-recipes:watch:compacted': Msg.WatchCompactedMessage;
  /** The message of `etcd-recipes:prefix-cache:resync`. */
  'etcd-recipes:prefix-cache:resync': Msg.PrefixCacheResyncMessage;
  /** The message of `etcd-recipes:service:lost`. */
  'etcd-recipes:service:lost': Msg.ServiceLostMessage;
  /** The message of `etcd-recipes:service:re-registered`. */
  'etcd-recipes:service:re-registered': Msg.ServiceReregisteredMessage;
}

/** The context object of each tracing channel, by name. */
export interface TracingContexts {
  /** The context object of `etcd-recipes:lock`. */
  'etcd-recipes:lock': Ctx.LockAcquireContext;
  /** The context object of `etcd-recipes:multi-lock`. */
  'etcd-recipes:multi-lock': Ctx.MultiLockAcquireContext;
  /** The context object of `etcd-recipes:election:campaign`. */
  'etcd-recipes:election:campaign': Ctx.CampaignContext;
  /** The context object of `etcd-recipes:stm`. */
  'etcd-recipes:stm': Ctx.STMContext;
  /** The context object of `etcd-recipes:stm:attempt`. */
  'etcd-recipes:stm:attempt': Ctx.STMAttemptContext;
  /** The context object of `etcd-recipes:queue:enqueue`. */
  'etcd-recipes:queue:enqueue': Ctx.EnqueueContext;
  /** The context object of `etcd-recipes:queue:dequeue`. */
  'etcd-recipes:queue:dequeue': Ctx.DequeueContext;
  /** The context object of `etcd-recipes:work-queue:claim`. */
  'etcd-recipes:work-queue:claim': Ctx.JobClaimContext;
  /** The context object of `etcd-recipes:work-queue:ack`. */
  'etcd-recipes:work-queue:ack': Ctx.JobAckContext;
}

/** A point channel's name. */
export type DiagnosticsChannelName = keyof DiagnosticsMessages;
/** A tracing channel's name. */
export type TracingChannelName = keyof TracingContexts;
