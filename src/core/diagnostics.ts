import {
  channel,
  subscribe,
  tracingChannel,
  unsubscribe,
  type Channel,
  type TracingChannel,
} from 'node:diagnostics_channel';
import { showKey } from './keys.js';

/*
 * Every `node:diagnostics_channel` channel the library publishes on, with its
 * message shape, declared once. Names and shapes are API (docs/observability.md).
 *
 * Channels are process-wide by name, so the ESM and the CJS copy of the
 * library publish to the same subscribers. Nothing here builds a message
 * unless someone subscribes: every publish checks `hasSubscribers` first.
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
// Message shapes. Names are rendered as strings (UTF-8, or `0x<hex>`).
// Durations in messages are milliseconds (`performance.now()` differences).

/** Every session message. */
export interface SessionMessage {
  /** The lease ID, decimal. */
  leaseId: string;
  /** The lease ID in lowercase hex (as in Mutex and Election keys). */
  leaseHex: string;
  /** The TTL etcd granted, in seconds. */
  ttl: number;
}

/** `etcd-recipes:session:renewed-late`: a keepalive acknowledged with less than half the TTL left, or the first after a reconnect. */
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
  /** From the call to the outcome, in ms. */
  waitMs: number;
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

/** `etcd-recipes:lock:lost`: the hold ended without a release (session lost or closed, or the key deleted by someone else). */
export interface LockLostMessage extends LockReleasedMessage {
  /** Why the hold ended (the session's abort reason, or an error saying the key was deleted). */
  error: unknown;
}

/** The context of `etcd-recipes:multi-lock` (acquireAll, withLocks); each lock also has its own `etcd-recipes:lock` events. */
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

/** Part of every election message. */
export interface ElectionTarget {
  /** The election's name. */
  name: string;
  /** Our campaign key, `<name>/<lease hex>`. */
  key: string;
  /** The session's lease ID, decimal. */
  leaseId: string;
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

/** `etcd-recipes:election:leader`: an observer (`observe()`, `observeLeader`, runAsLeader's observer) saw a leader change. */
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

/** The queue recipes. */
export type QueueRecipe = 'queue' | 'priority-queue' | 'work-queue';

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

/** `etcd-recipes:work-queue:retry`: a claim took a job whose earlier claim ended without an ack (attempts ≥ 2). */
export type JobRetryMessage = JobMessage;

/** `etcd-recipes:work-queue:dead-letter`. */
export interface JobDeadLetterMessage extends JobMessage {
  /** `'max-attempts'`: claimed more than `maxAttempts` times; `'manual'`: `job.deadLetter()`. */
  reason: 'max-attempts' | 'manual';
}

/** `etcd-recipes:watch:reconnect`: the shared watch stream broke and is re-opened (every watch resumes where it was). */
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

/** The message of each point channel, by name. */
export interface DiagnosticsMessages {
  /** The message of `etcd-recipes:session:created`. */
  'etcd-recipes:session:created': SessionMessage;
  /** The message of `etcd-recipes:session:renewed-late`. */
  'etcd-recipes:session:renewed-late': SessionRenewedLateMessage;
  /** The message of `etcd-recipes:session:lost`. */
  'etcd-recipes:session:lost': SessionLostMessage;
  /** The message of `etcd-recipes:session:closed`. */
  'etcd-recipes:session:closed': SessionMessage;
  /** The message of `etcd-recipes:lock:wait`. */
  'etcd-recipes:lock:wait': LockWaitMessage;
  /** The message of `etcd-recipes:lock:released`. */
  'etcd-recipes:lock:released': LockReleasedMessage;
  /** The message of `etcd-recipes:lock:lost`. */
  'etcd-recipes:lock:lost': LockLostMessage;
  /** The message of `etcd-recipes:election:deposed`. */
  'etcd-recipes:election:deposed': ElectionDeposedMessage;
  /** The message of `etcd-recipes:election:resigned`. */
  'etcd-recipes:election:resigned': ElectionResignedMessage;
  /** The message of `etcd-recipes:election:leader`. */
  'etcd-recipes:election:leader': ElectionLeaderMessage;
  /** The message of `etcd-recipes:work-queue:release`. */
  'etcd-recipes:work-queue:release': JobMessage;
  /** The message of `etcd-recipes:work-queue:retry`. */
  'etcd-recipes:work-queue:retry': JobRetryMessage;
  /** The message of `etcd-recipes:work-queue:dead-letter`. */
  'etcd-recipes:work-queue:dead-letter': JobDeadLetterMessage;
  /** The message of `etcd-recipes:watch:reconnect`. */
  'etcd-recipes:watch:reconnect': WatchReconnectMessage;
  /** The message of `etcd-recipes:watch:compacted`. */
  'etcd-recipes:watch:compacted': WatchCompactedMessage;
  /** The message of `etcd-recipes:prefix-cache:resync`. */
  'etcd-recipes:prefix-cache:resync': PrefixCacheResyncMessage;
  /** The message of `etcd-recipes:service:lost`. */
  'etcd-recipes:service:lost': ServiceLostMessage;
  /** The message of `etcd-recipes:service:re-registered`. */
  'etcd-recipes:service:re-registered': ServiceReregisteredMessage;
}

/** The context object of each tracing channel, by name. */
export interface TracingContexts {
  /** The context object of `etcd-recipes:lock`. */
  'etcd-recipes:lock': LockAcquireContext;
  /** The context object of `etcd-recipes:multi-lock`. */
  'etcd-recipes:multi-lock': MultiLockAcquireContext;
  /** The context object of `etcd-recipes:election:campaign`. */
  'etcd-recipes:election:campaign': CampaignContext;
  /** The context object of `etcd-recipes:stm`. */
  'etcd-recipes:stm': STMContext;
  /** The context object of `etcd-recipes:stm:attempt`. */
  'etcd-recipes:stm:attempt': STMAttemptContext;
  /** The context object of `etcd-recipes:queue:enqueue`. */
  'etcd-recipes:queue:enqueue': EnqueueContext;
  /** The context object of `etcd-recipes:queue:dequeue`. */
  'etcd-recipes:queue:dequeue': DequeueContext;
  /** The context object of `etcd-recipes:work-queue:claim`. */
  'etcd-recipes:work-queue:claim': JobClaimContext;
  /** The context object of `etcd-recipes:work-queue:ack`. */
  'etcd-recipes:work-queue:ack': JobAckContext;
}

/** A point channel's name. */
export type DiagnosticsChannelName = keyof DiagnosticsMessages;
/** A tracing channel's name. */
export type TracingChannelName = keyof TracingContexts;

/** Handlers for {@link subscribeTracing}; each gets the operation's context object (the same object throughout one call). */
export interface TracingHandlers<C> {
  /** The call began (the context is bound to async stores while it runs). */
  start?(context: C): void;
  /** The call's synchronous part returned. */
  end?(context: C): void;
  /** The outcome is in: `context.result` or `context.error` is set. */
  asyncStart?(context: C): void;
  /** The call ended: `context.result` or `context.error` is set. */
  asyncEnd?(context: C): void;
  /** The call rejected: `context.error` is set (`asyncStart`/`asyncEnd` follow). */
  error?(context: C): void;
}

/**
 * Subscribes `listener` to one of the library's point channels, typed.
 * Same as `diagnostics_channel.subscribe(name, listener)`.
 * @returns a function that unsubscribes
 */
export function subscribeDiagnostics<N extends DiagnosticsChannelName>(
  name: N,
  listener: (message: DiagnosticsMessages[N], name: string | symbol) => void,
): () => void {
  const l = listener as (message: unknown, name: string | symbol) => void;
  subscribe(name, l);
  return () => {
    unsubscribe(name, l);
  };
}

/**
 * Subscribes to one of the library's tracing channels, typed. Same as
 * `diagnostics_channel.tracingChannel(name).subscribe(handlers)`.
 * @returns a function that unsubscribes
 */
export function subscribeTracing<N extends TracingChannelName>(
  name: N,
  handlers: TracingHandlers<TracingContexts[N]>,
): () => void {
  const subs: [string, (m: unknown) => void][] = [];
  for (const event of ['start', 'end', 'asyncStart', 'asyncEnd', 'error'] as const) {
    const h = handlers[event];
    if (!h) continue;
    const channelName = `tracing:${name}:${event}`;
    const l = (m: unknown) => h.call(handlers, m as TracingContexts[N]);
    subscribe(channelName, l);
    subs.push([channelName, l]);
  }
  return () => {
    for (const [n, l] of subs) unsubscribe(n, l);
  };
}

// ---------------------------------------------------------------------------
// Publishing (internal)

type Point = { [K in keyof typeof DIAGNOSTICS_CHANNELS]: Channel };
/** @internal The point channels, made once (channel objects are shared by name across the process). */
export const points = Object.fromEntries(
  Object.entries(DIAGNOSTICS_CHANNELS).map(([k, name]) => [k, channel(name)]),
) as Point;

type Tracing = { [K in keyof typeof TRACING_CHANNELS]: TracingChannel<unknown, object> };
/** @internal The tracing channels. */
export const tracing = Object.fromEntries(
  Object.entries(TRACING_CHANNELS).map(([k, name]) => [k, tracingChannel(name)]),
) as Tracing;

/** @internal Publishes the message `make()` builds on point channel `which`, if anyone listens. */
export function publish<K extends keyof typeof DIAGNOSTICS_CHANNELS>(
  which: K,
  make: () => DiagnosticsMessages[(typeof DIAGNOSTICS_CHANNELS)[K]],
): void {
  const ch = points[which];
  if (ch.hasSubscribers) ch.publish(make());
}

function tracingOn(tc: TracingChannel<unknown, object>): boolean {
  // TracingChannel.hasSubscribers is Node ≥ 20.13; this is what it computes.
  return (
    tc.start.hasSubscribers ||
    tc.end.hasSubscribers ||
    tc.asyncStart.hasSubscribers ||
    tc.asyncEnd.hasSubscribers ||
    tc.error.hasSubscribers
  );
}

/**
 * @internal Runs `fn` as operation `which` (Node's `tracePromise` sequence),
 * if anyone listens: `start` (with the context bound to async stores, so
 * spans nest), `end`, then `asyncStart`/`asyncEnd` with `context.result`
 * set to `result(value, context, elapsedMs)`, or `error` first with `context.error`.
 * Without subscribers it only calls `fn(undefined)`.
 */
export function traced<K extends keyof typeof TRACING_CHANNELS, T>(
  which: K,
  makeContext: () => TracingContexts[(typeof TRACING_CHANNELS)[K]],
  fn: (context: TracingContexts[(typeof TRACING_CHANNELS)[K]] | undefined) => Promise<T>,
  result: (value: T, context: TracingContexts[(typeof TRACING_CHANNELS)[K]], elapsedMs: number) => unknown,
): Promise<T> {
  const tc = tracing[which];
  if (!tracingOn(tc)) return fn(undefined);
  const since = performance.now();
  const context = makeContext();
  const outcome = context as { result?: unknown; error?: unknown };
  return tc.start.runStores(context, () => {
    try {
      return fn(context).then(
        (value) => {
          outcome.result = result(value, context, performance.now() - since);
          tc.asyncStart.publish(context);
          tc.asyncEnd.publish(context);
          return value;
        },
        (err: unknown) => {
          outcome.error = err;
          tc.error.publish(context);
          tc.asyncStart.publish(context);
          tc.asyncEnd.publish(context);
          throw err;
        },
      );
    } catch (err) {
      outcome.error = err;
      tc.error.publish(context);
      throw err;
    } finally {
      tc.end.publish(context);
    }
  });
}

/** @internal A name as messages show it. */
export function nameOf(name: string | Buffer): string {
  return showKey(name);
}

/** @internal The session fields of a session message. */
export function sessionFields(s: { leaseId: string; leaseHex: string; ttl: number }): SessionMessage {
  return { leaseId: s.leaseId, leaseHex: s.leaseHex, ttl: s.ttl };
}

/**
 * @internal One hold's end, published exactly once: released, or lost (the
 * session's signal aborted, or the key was deleted by someone else).
 * Listens to the session only when someone listens to `lock:lost`.
 */
export class HoldTrace {
  readonly #lock: LockTarget;
  readonly #key: Buffer;
  readonly #token: bigint;
  readonly #since = performance.now();
  #ended = false;
  #detach: (() => void) | undefined;

  constructor(lock: LockTarget, sessionSignal: AbortSignal, key: Buffer, token: bigint) {
    this.#lock = lock;
    this.#key = key;
    this.#token = token;
    if (!points.lockLost.hasSubscribers) return;
    const onAbort = () => this.lost(sessionSignal.reason);
    sessionSignal.addEventListener('abort', onAbort, { once: true });
    this.#detach = () => sessionSignal.removeEventListener('abort', onAbort);
  }

  /** The hold ended with a release (the key deleted by us). */
  released(): void {
    if (!this.#end()) return;
    publish('lockReleased', () => this.#message());
  }

  /** The hold ended without a release. */
  lost(error: unknown): void {
    if (!this.#end()) return;
    publish('lockLost', () => ({ ...this.#message(), error }));
  }

  #end(): boolean {
    if (this.#ended) return false;
    this.#ended = true;
    this.#detach?.();
    return true;
  }

  #message(): LockReleasedMessage {
    return {
      ...this.#lock,
      key: showKey(this.#key),
      fencingToken: this.#token,
      heldMs: performance.now() - this.#since,
    };
  }
}

/** @internal Traces one lock acquire (see joinLine); `fn` gets a callback for the moment it starts waiting. */
export function traceLock<T extends { key: Buffer; rev: bigint; waited: boolean } | undefined>(
  lock: LockTarget | undefined,
  wait: boolean,
  fn: (onWait: ((key: Buffer, rev: bigint, blocker: Buffer | undefined) => void) | undefined) => Promise<T>,
): Promise<T> {
  if (!lock) return fn(undefined);
  const since = performance.now();
  return traced(
    'lock',
    () => ({ ...lock, wait }),
    (context) =>
      fn((key, rev, blocker) => {
        publish('lockWait', () => ({
          ...lock,
          context: context ?? { ...lock, wait },
          key: showKey(key),
          revision: rev,
          blocker: blocker && showKey(blocker),
        }));
      }),
    (turn): LockAcquireResult =>
      turn
        ? {
            acquired: true,
            key: showKey(turn.key),
            fencingToken: turn.rev,
            waited: turn.waited,
            waitMs: performance.now() - since,
          }
        : { acquired: false, waited: false, waitMs: performance.now() - since },
  );
}

/** @internal What a lock message says about the lock. */
export function lockTarget(
  recipe: LockRecipe,
  name: string | Buffer,
  session: { leaseId: string },
  permits = 1,
  mode?: 'read' | 'write',
): LockTarget {
  return mode
    ? { recipe, name: showKey(name), mode, permits, leaseId: session.leaseId }
    : { recipe, name: showKey(name), permits, leaseId: session.leaseId };
}

/** @internal What an election message says about the election. */
export function electionTarget(name: string | Buffer, key: Buffer, session: { leaseId: string }): ElectionTarget {
  return { name: showKey(name), key: showKey(key), leaseId: session.leaseId };
}
