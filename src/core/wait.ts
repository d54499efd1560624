import type { Namespace } from 'etcd3';
import { openWatch, WatchCompactedError, type WatchHandle, type WatchSpec } from './watch-hub.js';
import { raceAbort, untilWoken } from './abort.js';
import type { HandoffSlot } from './handoff.js';
import type { FeedSub } from './line-feed.js';
import { SessionExpiredError } from './errors.js';
import { showKey } from './keys.js';
import type { Logger } from './log.js';
import { retrying } from './retry.js';

/*
 * The waiting primitive every queue-shaped recipe uses (Mutex, Election,
 * RWMutex, Semaphore, DoubleBarrier...).
 *
 * A waiter knows, from one read, the one thing that blocks it: usually its
 * immediate predecessor's key (identified by key AND create revision, because
 * a session re-creates the same key name), so that a handoff wakes exactly one
 * waiter. It then waits for that thing to change and reads again.
 *
 * Why the watch starts at "now", with one confirming read: docs/internals.md,
 * 'Why a watch starts at "now"'.
 */

/** What a waiter waits on until it changes. */
export type WatchTarget =
  /** One key, identified by name and create revision; wake on its deletion (or on any event with `anyEvent`). */
  | { kind: 'key'; key: Buffer; createRevision: bigint; anyEvent?: boolean }
  /** Every key under a prefix; wake on any deletion there. */
  | { kind: 'prefix-deletes'; prefix: Buffer };

/** The waiter's view of its queue after one read. */
export interface LineState<T = unknown> {
  /** False when the waiter's own key is gone or was re-created: its session expired. */
  alive: boolean;
  /** What still blocks the waiter, or undefined when it may proceed. */
  blocker?: WatchTarget;
  /** The store revision of the read. */
  revision: bigint;
  /** How many keys are ahead of the waiter in line, when the read knows (a range's count). */
  ahead?: number;
  /** Recipe-specific data carried along (e.g. the owner's value). */
  data?: T;
}

/** From this depth in line a waiter watches from its read's revision instead (docs/internals.md, same section). */
const DEEP_IN_LINE = 64;

/** Options of {@link waitInLine}. */
export interface WaitInLineOptions<T> {
  /** The state from the acquiring Txn (or a first read). */
  initial: LineState<T>;
  /** One request that re-reads the state: own key liveness plus the current blocker. */
  read: () => Promise<LineState<T>>;
  /** Aborts the wait (combine the caller's signal and the session's). */
  signal: AbortSignal;
  /** Names the waiter in errors and logs. */
  what: string;
  log?: Logger;
  /** A local release may hand us the turn through this slot: the proof a read would give (core/handoff.ts). */
  handoff?: HandoffSlot;
  /** The line's feed, subscribed before `initial`'s read: followed instead of a watch of our own while live. */
  follow?: LineFollow;
}

/** A waiter's subscription to its line's feed (core/line-feed.ts, with {@link lineFeedSpec}). */
interface LineFollow {
  sub: FeedSub;
  /** Our key and its create revision. */
  key: Buffer;
  rev: bigint;
}

/** The feed a {@link LineFollow} subscribes to: the deletes under the line's prefix, with what they deleted. */
export const lineFeedSpec = (prefix: Buffer): WatchSpec => ({ key: prefix, prefix: true, noPut: true, prevKv: true });

function sameTarget(a: WatchTarget, b: WatchTarget): boolean {
  if (a.kind === 'key' && b.kind === 'key')
    return a.key.equals(b.key) && a.createRevision === b.createRevision && !!a.anyEvent === !!b.anyEvent;
  if (a.kind === 'prefix-deletes' && b.kind === 'prefix-deletes') return a.prefix.equals(b.prefix);
  return false;
}

/**
 * Waits until the line's state has no blocker and returns that state. Rejects
 * with a SessionExpiredError when a read finds the waiter's own key gone, and
 * with the signal's reason when the signal aborts. Transient etcd errors are
 * retried for as long as the signal allows.
 */
export async function waitInLine<T>(client: Namespace, options: WaitInLineOptions<T>): Promise<LineState<T>> {
  const { read, signal, what, log, handoff } = options;
  let state = options.initial;
  // Handed over at revision r: our key alive and nobody ahead at r, as a read at r would have
  // found. A read newer than r (which may have found our key gone since) decides instead.
  const handedOver = (): LineState<T> | undefined => {
    const r = handoff?.revision;
    return r !== undefined && r >= state.revision ? { alive: true, revision: r } : undefined;
  };
  const orHandOver = <R>(p: Promise<R>): Promise<R | undefined> => {
    if (!handoff) return p;
    p.catch(() => undefined); // overtaken by the hand-over, it may still fail: nobody needs it
    return Promise.race([p, handoff.taken.then(() => undefined)]);
  };
  const reread = async (): Promise<LineState<T>> => {
    const reading = retrying(read, {
      signals: [signal],
      maxElapsedMs: Infinity,
      onRetry: (err) => log?.('%s: read failed, retrying: %s', what, (err as Error).message),
    });
    return (await orHandOver(reading)) ?? handedOver() ?? (await reading);
  };
  const follower = options.follow && new Follower(options.follow, state);
  for (;;) {
    state = handedOver() ?? state;
    if (!state.alive)
      throw new SessionExpiredError(`${what}: our key is gone; the session's lease expired while waiting`);
    const blocker = state.blocker;
    if (!blocker) return state;
    signal.throwIfAborted();
    handoff?.waitOn(
      blocker.kind === 'key' ? blocker.key : undefined,
      blocker.kind === 'key' ? blocker.createRevision : 0n,
    );
    if (follower?.live && blocker.kind === 'key') {
      log?.('%s: following the line until %s goes', what, describeTarget(blocker));
      const proof = await follower.until(state, blocker, signal, orHandOver);
      if (proof || handedOver()) {
        state = proof ?? state;
        continue;
      }
      if (handoff) await raceAbort(handoff.releaseOf(blocker.key, blocker.createRevision), signal);
      state = handedOver() ?? (await reread());
      continue;
    }
    const deep = (state.ahead ?? 0) >= DEEP_IN_LINE;
    const from = deep ? state.revision + 1n : undefined;
    const opening = retrying(() => ChangeWatch.open(client, blocker, signal, from), {
      signals: [signal],
      maxElapsedMs: Infinity,
      onRetry: (err) => log?.('%s: watch failed, retrying: %s', what, (err as Error).message),
    });
    const watch = await orHandOver(opening);
    if (!watch) {
      void opening.then(
        (w) => w.close(),
        () => undefined,
      );
      continue;
    }
    try {
      if (handedOver()) continue;
      if (!deep && watch.createdRevision > state.revision && !watch.changed) {
        const confirmed = await reread();
        if (!confirmed.blocker || !sameTarget(confirmed.blocker, blocker) || !confirmed.alive) {
          state = confirmed;
          continue;
        }
        state = confirmed;
      }
      log?.('%s: waiting on %s', what, describeTarget(blocker));
      await orHandOver(watch.untilChanged(signal));
      // Woken by a local release's delete: its reply, due now, may hand us the turn without a read.
      if (handoff && blocker.kind === 'key' && !handedOver())
        await raceAbort(handoff.releaseOf(blocker.key, blocker.createRevision), signal);
    } finally {
      watch.close();
    }
    state = handedOver() ?? (await reread());
  }
}

/**
 * Applies a line feed's deletes to a waiter's state, in place of a watch and
 * a read per turn: the delete of our key (our session ended) or of our
 * blocker, and, from the join's count of the keys ahead, the revision from
 * which none is left, which a read there would have shown
 * (docs/internals.md, "The line's feed").
 */
class Follower {
  readonly #f: LineFollow;
  /** Keys created before ours still there, counted from the join's read; undefined: not counting. */
  #ahead: number | undefined;
  /** The revision at which the last key ahead of us went. */
  #clearAt: bigint | undefined;
  /** The blocker waited on; undefined while a read is under way, whose blocker may go before we learn it. */
  #blocker: Buffer | undefined;

  constructor(f: LineFollow, joined: LineState<unknown>) {
    this.#f = f;
    this.#ahead = joined.ahead;
    f.sub.interest = (event) => {
      const at = event.kv.modRevision;
      if (at <= joined.revision) return 'skip';
      if (this.#ahead !== undefined) {
        const created = event.prevKv?.createRevision;
        if (created === undefined)
          this.#ahead = undefined; // its history was compacted: stop counting
        else if (created < f.rev && --this.#ahead === 0) {
          this.#clearAt = at;
          return 'wake';
        }
      }
      if (event.kv.key.equals(f.key) || (this.#blocker && event.kv.key.equals(this.#blocker))) return 'wake';
      return this.#blocker ? 'skip' : 'keep';
    };
    f.sub.push(f.sub.take()); // what came before the join's reply, counted as well
  }

  get live(): boolean {
    return this.#f.sub.live;
  }

  /**
   * Waits until the feed proves our turn or the end of our key (that state),
   * or (undefined) that `blocker` went, the feed ended or the turn was handed
   * over: then only a read or the hand-over can tell.
   */
  async until<T>(
    state: LineState<T>,
    blocker: WatchTarget & { kind: 'key' },
    signal: AbortSignal,
    orHandOver: <R>(p: Promise<R>) => Promise<R | undefined>,
  ): Promise<LineState<T> | undefined> {
    this.#blocker = blocker.key;
    try {
      for (;;) {
        let mine: bigint | undefined;
        let theirs: bigint | undefined;
        for (const event of this.#f.sub.take()) {
          const at = event.kv.modRevision;
          if (at <= state.revision) continue;
          if (mine === undefined && event.kv.key.equals(this.#f.key)) mine = at;
          if (theirs === undefined && event.kv.key.equals(blocker.key)) theirs = at;
        }
        const clear = this.#clearAt;
        if (clear !== undefined && (mine === undefined || clear < mine)) return { alive: true, revision: clear };
        if (mine !== undefined) return { alive: false, revision: mine };
        if (theirs !== undefined || !this.live) return undefined;
        if (!(await orHandOver(this.#f.sub.next(signal).then(() => true)))) return undefined;
      }
    } finally {
      this.#blocker = undefined;
    }
  }
}

function describeTarget(t: WatchTarget): string {
  return t.kind === 'key' ? `${showKey(t.key)}@${t.createRevision}` : `deletes under ${showKey(t.prefix)}`;
}

/**
 * One etcd watch, created from "now", that records whether the watched
 * thing changed. Compaction or cancellation of the watch also counts as a
 * change: the waiter re-reads and decides.
 */
export class ChangeWatch {
  changed = false;
  readonly createdRevision: bigint;
  readonly #handle: WatchHandle;
  #wake: (() => void) | undefined;

  private constructor(handle: WatchHandle) {
    this.#handle = handle;
    this.createdRevision = handle.createdRevision;
  }

  /**
   * Creates the watch and resolves once etcd confirmed it. Without
   * `startRevision` the watch starts "now" (live at once); with it, changes
   * since that revision are replayed first.
   */
  static async open(
    client: Namespace,
    target: WatchTarget,
    signal?: AbortSignal,
    startRevision?: bigint,
  ): Promise<ChangeWatch> {
    const spec: WatchSpec =
      target.kind === 'key'
        ? { key: target.key, noPut: !target.anyEvent, startRevision }
        : { key: target.prefix, prefix: true, noPut: true, startRevision };
    let self: ChangeWatch | undefined;
    let early = false;
    const fire = () => {
      if (!self) {
        early = true;
        return;
      }
      self.changed = true;
      self.#wake?.();
    };
    const listener = { onEvents: fire, onEnd: fire };
    const handle = await openWatch(client, spec, listener, signal).catch((err: unknown) => {
      if (!(err instanceof WatchCompactedError)) throw err;
      // The start revision is gone: history cannot be replayed, so watch from
      // now and count it as a change; the waiter re-reads the current state.
      early = true;
      return openWatch(client, { ...spec, startRevision: undefined }, listener, signal);
    });
    self = new ChangeWatch(handle);
    self.changed = early;
    return self;
  }

  /** Resolves when the watched thing changed; rejects with the signal's reason on abort. */
  untilChanged(signal: AbortSignal): Promise<void> {
    if (this.changed) return Promise.resolve();
    return untilWoken(signal, (wake) => {
      this.#wake = wake;
    });
  }

  /** Cancels the watch; a wait still pending on it (overtaken by a hand-over) resolves, freeing its listener. */
  close(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
    this.#handle.close();
  }
}
