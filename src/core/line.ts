import type { Logger } from './log.js';
import { combineSignals, raceAbort } from './abort.js';
import { traceLock, type LockTarget } from './diagnostics.js';
import { HandoffSlot } from './handoff.js';
import { cleanUpAfter, deleteOwnKey } from './holding.js';
import { deletePendingKey } from './late-copy.js';
import { childPrefix, sessionKey, showKey, uniqueKey } from './keys.js';
import {
  cmp,
  op,
  range,
  rangeAt,
  txn,
  type Compare,
  type KeyValue,
  type Op,
  type OpResult,
  type RangeOptions,
} from './kv.js';
import { takeLocalTurn, type LocalRelease } from './local-lock.js';
import { InternalError } from './errors.js';
import { retrying } from './retry.js';
import type { Session } from './session.js';
import { openFeed, subscribeIfLive, type FeedSub } from './line-feed.js';
import { lineFeedSpec, waitInLine, type LineState } from './wait.js';

/*
 * Joining a line: what Mutex, Election, RWMutex and Semaphore do to get their
 * turn. Write our key and read the line in one Txn, wait (herd-free) until
 * nothing blocks us, and on any failure or abort remove the key we may have
 * written, after the in-flight Txn settled. Recipes describe their line (its
 * Txn and its re-read); this module owns the sequence and its cleanup.
 */

/** The key an entering call is creating, kept up to date by `enter` for cleanup after abort or failure. */
export interface PendingKey {
  /** The key of the current attempt; undefined before the first Txn was sent. */
  key?: Buffer;
  /** Its create revision, once the Txn's reply arrived. */
  rev?: bigint;
  /** Set when the entry is several keys under this prefix (`key` among them), written and deleted together. */
  group?: Buffer;
  /** The name is unique to this call (createUniqueKey): no later call of ours creates it. */
  unique?: boolean;
}

/** Options of {@link joinLine}. */
export interface JoinLineOptions<T> {
  /** Names the caller in errors and logs. */
  what: string;
  log: Logger;
  /** The caller's signal (and any other that should abort the call); the session's is added. */
  signals: (AbortSignal | undefined)[];
  /**
   * For per-session keys (one key per lease and name, as Go's Mutex and
   * Election): queue local callers on this key first, so only one of them
   * uses it at a time. Omit for per-call unique keys.
   */
  localTurn?: Buffer;
  /**
   * Writes our key and reads the line in one Txn, setting `pending.key`
   * before sending and `pending.rev` when the reply arrives. It must retry
   * its own transient failures, adopting a key that an attempt whose reply
   * was lost did write.
   */
  enter(pending: PendingKey, signal: AbortSignal): Promise<LineState<T>>;
  /** One request re-reading the line: our key's liveness and our single blocker. */
  read(key: Buffer, rev: bigint): Promise<LineState<T>>;
  /** False: if blocked, leave the line (deleting our key) and resolve undefined. */
  wait: boolean;
  /** Set for locks and permits: the call is published on the `etcd-recipes:lock` channels. */
  lock?: LockTarget;
  /** The head of this line holds (Mutex, RWMutex): a local release may hand us the turn (core/handoff.ts). */
  handoff?: boolean;
  /**
   * The line's prefix, when every key under it is a key of the line and the
   * keys ahead of a waiter are those created before its key (Mutex, RWMutex writers): waiters
   * then follow the line's feed (core/line-feed.ts) instead of a watch each.
   * A turn proven by the feed, like a handed-over one, has no `state.data`.
   */
  feed?: Buffer;
}

/** A call's turn: its key, the key's create revision (the fencing token) and the final line state. */
export interface Turn<T> {
  key: Buffer;
  rev: bigint;
  state: LineState<T>;
  /** True if the call had to wait for others. */
  waited: boolean;
  /** True if a release in this process handed us the turn (core/handoff.ts). */
  handedOver: boolean;
  /** Lets the next local caller on the same per-session key go; call once the key is deleted. */
  releaseLocal: LocalRelease;
}

const noLocalTurn: LocalRelease = () => undefined;

/**
 * Enters the line and waits for our turn. Rejects with the signal's reason
 * when aborted, with a SessionExpiredError when the session's lease is lost
 * (including a write etcd refused because the lease was already gone), and
 * leaves no key behind in either case.
 */
export function joinLine<T>(session: Session, o: JoinLineOptions<T>): Promise<Turn<T> | undefined> {
  return traceLock(o.lock, o.wait, (onWait) => enterAndWait(session, o, onWait));
}

async function enterAndWait<T>(
  session: Session,
  o: JoinLineOptions<T>,
  onWait: ((key: Buffer, rev: bigint, blocker: Buffer | undefined) => void) | undefined,
): Promise<Turn<T> | undefined> {
  const { what, log } = o;
  const linked = combineSignals(...o.signals, session.signal);
  const signal = linked.signal;
  const pending: PendingKey = {};
  let releaseLocal: LocalRelease | undefined;
  let inFlight: Promise<unknown> = Promise.resolve();
  const feed = o.feed && [lineFeedSpec(o.feed)];
  let sub: FeedSub | undefined;
  try {
    releaseLocal = o.localTurn ? await takeLocalTurn(session.leaseId, o.localTurn, signal) : noLocalTurn;
    // Subscribed before the join, the feed tells of every delete after its read.
    sub = feed && subscribeIfLive(session.client, feed);
    const entering = o.enter(pending, signal);
    inFlight = entering;
    let state = await raceAbort(entering, signal).catch((err: unknown) => {
      // The lease may be gone on the server before our session noticed.
      throw session.leaseError(err, what);
    });
    const key = pending.key!;
    const rev = pending.rev!;
    const waited = !!state.blocker;
    let handedOver = false;
    if (state.blocker) {
      if (!o.wait) {
        await deleteOwnKey(session, key, rev, log, pending.group);
        releaseLocal();
        return undefined;
      }
      log(
        '%s: %s@%s queued behind %s',
        what,
        showKey(key),
        rev,
        state.blocker.kind === 'key' ? showKey(state.blocker.key) : 'deletes',
      );
      onWait?.(key, rev, state.blocker.kind === 'key' ? state.blocker.key : undefined);
      if (feed && !sub) openFeed(session.client, feed, log); // for the next waiter
      const handoff = o.handoff ? new HandoffSlot(session.client, key, rev, session.leaseId) : undefined;
      try {
        state = await waitInLine(session.client, {
          initial: state,
          read: () => o.read(key, rev),
          signal,
          what,
          log,
          handoff,
          follow: sub && { sub, key, rev },
        });
        handedOver = state.revision === handoff?.revision;
      } finally {
        handoff?.close();
      }
    }
    // Aborted at the last moment: do not hand out a turn the caller gave up on.
    signal.throwIfAborted();
    return { key, rev, state, waited, handedOver, releaseLocal };
  } catch (err) {
    if (releaseLocal) {
      const release = releaseLocal;
      await cleanUpAfter(inFlight, () => deletePendingKey(session, pending, log, o.localTurn), release, log);
    }
    throw err;
  } finally {
    sub?.close();
    linked.dispose();
  }
}

/** Bound on unique-name collisions in a row (two processes picking one nanosecond): never reached in practice. */
export const MAX_UNIQUE_ATTEMPTS = 50;

/** Extra conditions of {@link createUniqueKey}'s Txn. */
export interface UniqueKeyConditions {
  /** More compares besides "our key is absent" (e.g. "no round in progress"). */
  compares?: Compare[];
  /** Reads returned when one of `compares` fails (our key was not created). */
  failureReads?: Op[];
  /**
   * Writes these keys for a fresh name instead of the name itself, as one
   * entry (all on our lease, at one revision; the first is the one that
   * proves and orders it), and `group`, their common prefix, deleted as one.
   */
  entry?: (name: Buffer) => { keys: Buffer[]; group?: Buffer | undefined };
}

/**
 * Creates a fresh per-call key `<dir><19-digit ns>` (Go's `newUniqueKV`
 * layout), empty and attached to the session's lease, with `reads` in the
 * same Txn. Transient failures are retried with the same name. The proof
 * that an earlier copy of the Txn landed (our retry, or one etcd3 re-sent
 * unseen) is the key carrying our lease: it is then adopted, never
 * duplicated, whatever an attempt counter says; `reads` is undefined then
 * (re-read the line). A name another lease holds (the same nanosecond
 * elsewhere) gets a new suffix. Resolves undefined, with the failure reads,
 * when one of `conditions.compares` failed and nothing was created.
 */
export async function createUniqueKey(
  session: Session,
  dir: Buffer,
  reads: Op[],
  pending: PendingKey,
  signal?: AbortSignal,
): Promise<{ key: Buffer; rev: bigint; reads: OpResult[] | undefined }>;
export async function createUniqueKey(
  session: Session,
  dir: Buffer,
  reads: Op[],
  pending: PendingKey,
  signal: AbortSignal | undefined,
  conditions: UniqueKeyConditions,
): Promise<{ key: Buffer; rev: bigint; reads: OpResult[] | undefined } | { failure: OpResult[] }>;
export async function createUniqueKey(
  session: Session,
  dir: Buffer,
  reads: Op[],
  pending: PendingKey,
  signal?: AbortSignal,
  conditions: UniqueKeyConditions = {},
): Promise<{ key: Buffer; rev: bigint; reads: OpResult[] | undefined } | { failure: OpResult[] }> {
  const { client, leaseId } = session;
  const {
    compares = [],
    failureReads = [],
    entry = (name: Buffer): { keys: Buffer[]; group?: Buffer | undefined } => ({ keys: [name] }),
  } = conditions;
  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    const { keys, group } = entry(uniqueKey(dir));
    const key = keys[0]!;
    Object.assign(pending, { key, rev: undefined, group, unique: true });
    const res = await retrying(
      () =>
        txn(
          client,
          [...keys.map((k) => cmp.create(k, '==', 0n)), ...compares],
          [...keys.map((k) => op.put(k, '', leaseId)), ...reads],
          [op.range(key, { keysOnly: true }), ...failureReads],
        ),
      { signals: [signal], maxElapsedMs: Infinity },
    );
    if (res.succeeded) {
      pending.rev = res.revision;
      return { key, rev: res.revision, reads: res.responses.slice(keys.length) };
    }
    const existing = rangeAt(res, 0).kvs[0];
    if (existing && existing.lease === leaseId) {
      pending.rev = existing.createRevision;
      return { key, rev: existing.createRevision, reads: undefined };
    }
    if (!existing) {
      pending.key = undefined;
      return { failure: res.responses.slice(1) };
    }
    if (attempt >= MAX_UNIQUE_ATTEMPTS)
      throw new InternalError(`no unique key under ${showKey(dir)} after ${attempt} attempts`);
  }
}

/**
 * Go's `concurrency` line, shared by Mutex and Election: each session owns
 * the key `<name>/<lease hex>`, and the key with the lowest create revision
 * under `<name>/` is first.
 */
export class SessionLine {
  readonly key: Buffer;
  readonly prefix: Buffer;
  readonly #session: Session;

  constructor(session: Session, name: string | Buffer) {
    this.#session = session;
    this.key = sessionKey(name, session.leaseId);
    this.prefix = childPrefix(name);
  }

  /**
   * Create-if-absent with `value` and, in the same round trip, read who is
   * ahead: our new key has the highest create revision in the store, so the
   * two newest keys under the prefix are ours and our immediate predecessor.
   * An existing key of this session (a retried Txn whose reply was lost, or
   * this lease's earlier key) is adopted with its place in line, as Go does;
   * with `replaceValue`, a different value is then put in a Txn guarded by
   * the key's create revision (Go's Election re-campaign).
   */
  async enter(
    value: Buffer,
    replaceValue: boolean,
    pending: PendingKey,
    signal: AbortSignal,
  ): Promise<LineState<KeyValue>> {
    pending.key = this.key;
    return retrying(() => this.#enterOnce(value, replaceValue, pending), { signals: [signal], maxElapsedMs: Infinity });
  }

  async #enterOnce(value: Buffer, replaceValue: boolean, pending: PendingKey): Promise<LineState<KeyValue>> {
    const { client, leaseId } = this.#session;
    // Each round ends unless our key vanished between two of our Txns (its lease just expired, or an
    // outside delete); bounded all the same.
    for (let round = 0; round < 100; round++) {
      pending.rev = undefined;
      const res = await txn(
        client,
        [cmp.create(this.key, '==', 0n)],
        [
          op.put(this.key, value, leaseId),
          op.range(this.prefix, { prefix: true, sortTarget: 'Create', sortOrder: 'Descend', limit: 2 }),
        ],
        [op.range(this.key)],
      );
      if (res.succeeded) {
        pending.rev = res.revision;
        const line = rangeAt(res, 1);
        // Without a revision filter the count is exact: everyone ahead of us, plus us.
        return this.#state(line.kvs, res.revision, res.revision, Number(line.count) - 1);
      }
      const mine = rangeAt(res, 0).kvs[0];
      if (!mine) continue; // impossible in one Txn, but never adopt a key we did not see
      pending.rev = mine.createRevision;
      if (!replaceValue || mine.value.equals(value)) return this.read(mine.createRevision);
      const put = await txn(
        client,
        [cmp.create(this.key, '==', mine.createRevision)],
        [op.put(this.key, value, leaseId), op.range(this.prefix, this.#lineRange(mine.createRevision))],
      );
      if (!put.succeeded) continue; // our key vanished in between: enter anew
      return this.#state(rangeAt(put, 1).kvs, mine.createRevision, put.revision);
    }
    throw new InternalError(`${showKey(this.key)}: our key kept vanishing while entering the line`);
  }

  #lineRange(rev: bigint): RangeOptions {
    return { prefix: true, maxCreateRevision: rev, sortTarget: 'Create', sortOrder: 'Descend', limit: 2 };
  }

  /** Our key and our immediate predecessor, newest first: liveness and blocker in one range. */
  async read(rev: bigint): Promise<LineState<KeyValue>> {
    const r = await range(this.#session.client, this.prefix, this.#lineRange(rev));
    // etcd's count ignores max_create_revision (it counts everyone behind us too): no `ahead` here.
    return this.#state(r.kvs, rev, r.revision);
  }

  #state(kvs: KeyValue[], rev: bigint, revision: bigint, ahead?: number): LineState<KeyValue> {
    const [first, pred] = kvs;
    const alive = !!first && first.createRevision === rev && first.key.equals(this.key);
    return {
      alive,
      revision,
      ahead,
      data: alive ? first : undefined,
      blocker: alive && pred ? { kind: 'key', key: pred.key, createRevision: pred.createRevision } : undefined,
    };
  }
}
