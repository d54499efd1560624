import {
  channel,
  subscribe,
  tracingChannel,
  unsubscribe,
  type Channel,
  type TracingChannel,
} from 'node:diagnostics_channel';
import {
  DIAGNOSTICS_CHANNELS,
  type DiagnosticsChannelName,
  type DiagnosticsMessages,
  TRACING_CHANNELS,
  type TracingChannelName,
  type TracingContexts,
} from './diagnostics-channels.js';
import { showKey } from './keys.js';
import type {
  SessionMessage,
  LockRecipe,
  LockTarget,
  LockReleasedMessage,
  ElectionTarget,
} from './diagnostics-messages.js';
import type { LockAcquireResult } from './tracing-contexts.js';

/*
 * Subscribing to and publishing on the library's diagnostics channels
 * (declared in diagnostics-channels.ts). Nothing here builds a message
 * unless someone subscribes: every publish checks `hasSubscribers` first.
 */

export * from './diagnostics-channels.js';
export type * from './diagnostics-messages.js';
export type * from './tracing-contexts.js';

/** The five channels of a tracing channel, as Node names them. */
const TRACING_EVENTS = ['start', 'end', 'asyncStart', 'asyncEnd', 'error'] as const;

/**
 * Handlers for {@link subscribeTracing}; each gets the operation's context object (the same object throughout one
 * call).
 */
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
  for (const event of TRACING_EVENTS) {
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
const points = Object.fromEntries(Object.entries(DIAGNOSTICS_CHANNELS).map(([k, name]) => [k, channel(name)])) as Point;

type Tracing = { [K in keyof typeof TRACING_CHANNELS]: TracingChannel<unknown, object> };
/** @internal The tracing channels. */
const tracing = Object.fromEntries(
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
  return TRACING_EVENTS.some((event) => tc[event].hasSubscribers);
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
export function traceLock<T extends { key: Buffer; rev: bigint; waited: boolean; handedOver: boolean } | undefined>(
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
            ...(turn.handedOver && { handedOver: true }),
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
