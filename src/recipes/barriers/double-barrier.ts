import type { WaitOptions } from '../../core/options.js';
import { linkSignals, raceAbort } from '../../core/abort.js';
import { BarrierFullError, InternalError, InvalidArgumentError, SessionExpiredError } from '../../core/errors.js';
import { isCompacted } from '../../core/etcd-errors.js';
import { cleanUpAfter, deleteOwnKey } from '../../core/holding.js';
import { joinKey, showKey } from '../../core/keys.js';
import { createUniqueKey, joinLine, type PendingKey } from '../../core/line.js';
import { cmp, op, range, rangeAt, txn, type KeyValue, type TxnResult } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { retrying, retryingUntil } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkInteger, checkName, checkWaitOptions } from '../../core/validate.js';
import { waitInLine, type LineState, type WatchTarget } from '../../core/wait.js';

const log = logger('double-barrier');

/** Options of {@link DoubleBarrier.enter} and {@link DoubleBarrier.leave}. */
export type DoubleBarrierOptions = WaitOptions;

/** This participant's key in the current round. */
interface Participant {
  key: Buffer;
  /** Create revision of `key`. */
  rev: bigint;
  /** Mod revision of `<key>/ready` when the round started: members are the keys created before it. */
  round: bigint;
}

/** What a leave read found. */
interface LeaveView {
  /** This participant is the only member of the round that has not left. */
  alone: boolean;
  /** Mod revision of `<key>/ready`, undefined when absent. */
  ready: bigint | undefined;
}

const noop = (): void => undefined;

/**
 * A double barrier: `enter()` blocks until `count` participants have
 * entered, `leave()` blocks until all of them have left. Wire-compatible
 * with Go's `recipe.DoubleBarrier` (`experimental/recipes`): each
 * participant writes `<key>/waiters/<19-digit nanoseconds>` (attached to
 * its session's lease) and the participant that completes the count writes
 * `<key>/ready`. Implements the corrected (etcd main-branch) algorithm:
 * never more than `count` participants pass `enter()` in one round; more
 * are rejected with {@link BarrierFullError}, leaving nothing behind.
 *
 * One object is one participant. Several participants may share a session
 * (each call writes its own unique key).
 */
export class DoubleBarrier {
  /** The session whose lease owns this participant's key. */
  readonly session: Session;
  /** The barrier key; the barrier's keys live under `<key>/`. */
  readonly key: string | Buffer;
  /** How many participants make a round. */
  readonly count: number;
  readonly #waiters: Buffer;
  readonly #ready: Buffer;
  readonly #what: string;
  #phase: 'idle' | 'entering' | 'entered' | 'leaving' = 'idle';
  #me: Participant | undefined;

  /**
   * @param session - the session whose lease this participant's key is attached to
   * @param key - the barrier key (Go's `key`); keys live under `<key>/`
   * @param count - participants per round, an integer ≥ 1
   * @throws InvalidArgumentError for a non-Session, an empty key or a bad count
   */
  constructor(session: Session, key: string | Buffer, count: number) {
    checkSession(session);
    checkName(key, 'key');
    checkInteger(count, 'count', 1);
    this.session = session;
    this.key = key;
    this.count = count;
    this.#waiters = joinKey(key, '/waiters/');
    this.#ready = joinKey(key, '/ready');
    this.#what = `double barrier ${showKey(key)}`;
  }

  /** True between a successful `enter()` and the end of `leave()`. */
  get entered(): boolean {
    return this.#phase === 'entered' || this.#phase === 'leaving';
  }

  /** This participant's key, `<key>/waiters/<nanoseconds>`, while entered; undefined otherwise. */
  get participantKey(): string | undefined {
    return this.entered ? this.#me?.key.toString() : undefined;
  }

  /**
   * Enters the barrier and blocks until `count` participants have entered.
   * @throws BarrierFullError if `count` participants have already entered or
   *   a round is still in progress (Go's `ErrTooManyClients`); nothing is left behind
   * @throws SessionExpiredError if the session's lease is lost while waiting
   * @throws InvalidArgumentError if this object has already entered (or is entering)
   */
  async enter(options: DoubleBarrierOptions = {}): Promise<void> {
    checkWaitOptions(options);
    if (this.#phase !== 'idle') {
      throw new InvalidArgumentError(
        'this',
        `${this.#what}: this participant has already entered or is entering; ` +
          'use one DoubleBarrier object per participant',
      );
    }
    const { session } = this;
    options.signal?.throwIfAborted();
    session.throwIfExpired();
    this.#phase = 'entering';
    try {
      // joinLine removes the key this call may have created if it fails or is turned away.
      const turn = await joinLine<bigint>(session, {
        what: this.#what,
        log,
        wait: true,
        signals: [options.signal],
        enter: (pending, signal) => this.#join(pending, signal),
        read: (key, rev) => this.#readEnter(key, rev),
      });
      this.#me = { key: turn!.key, rev: turn!.rev, round: turn!.state.data! };
      this.#phase = 'entered';
      log('%s: %s passes, round %s', this.#what, showKey(turn!.key), this.#me.round);
    } catch (err) {
      this.#phase = 'idle';
      throw err;
    }
  }

  /**
   * Leaves the barrier and blocks until every participant of the round has
   * left. A participant whose session dies counts as having left once its
   * lease is gone (at the latest after its TTL).
   * @throws SessionExpiredError if this participant's lease is lost first
   * @throws InvalidArgumentError if this object has not entered (or is already leaving)
   */
  async leave(options: DoubleBarrierOptions = {}): Promise<void> {
    checkWaitOptions(options);
    if (this.#phase !== 'entered' || !this.#me) {
      throw new InvalidArgumentError(
        'this',
        `${this.#what}: leave() needs a successful enter() first` +
          (this.#phase === 'leaving' ? ' (already leaving)' : ''),
      );
    }
    const { session } = this;
    const me = this.#me;
    // An already aborted signal is handled like one that aborts while waiting: the participant steps out.
    this.#phase = 'leaving';
    const linked = linkSignals(options.signal, session.signal);
    const signal = linked.signal;
    let inLine = true;
    let finishing: Promise<unknown> = Promise.resolve();
    const read = () => this.#readLeave(me, inLine);
    const waitForOthers = async () =>
      waitInLine(session.client, { initial: await retryingUntil(signal, read), read, signal, what: this.#what, log });
    try {
      // Still in line: wait while we are the lowest and others remain; then
      // either finish the round (alone) or step out of line.
      let state = await waitForOthers();
      if (state.data!.alone) {
        finishing = retrying(this.#finishRound(me), { signals: [signal] });
        await raceAbort(finishing, signal);
        log('%s: %s left last, round %s over', this.#what, showKey(me.key), me.round);
      } else {
        await deleteOwnKey(session, me.key, me.rev, log);
        inLine = false;
        log('%s: %s left, waiting for the others', this.#what, showKey(me.key));
        // Out of line: wait until no member of the round remains.
        state = await waitForOthers();
        const ready = state.data!.ready;
        // The last member died instead of leaving: remove the round's ready key for it.
        if (ready === me.round) await this.#removeStaleReady(me.round);
        log('%s: %s passes, round %s over', this.#what, showKey(me.key), me.round);
      }
    } catch (err) {
      if (inLine) {
        // Aborted or failed: step out of line rather than leave our key behind.
        await cleanUpAfter(finishing, () => deleteOwnKey(session, me.key, me.rev, log), noop, log);
      }
      throw err;
    } finally {
      this.#phase = 'idle';
      this.#me = undefined;
      linked.dispose();
    }
  }

  /**
   * Creates this participant's key, if no round is in progress, and learns
   * its position (how many live keys were created up to and including it):
   * past the count it is turned away, the count-th starts the round, the
   * others wait for `<key>/ready`. A stale `ready` key (its round has no
   * member left: a crash) is removed first.
   */
  async #join(pending: PendingKey, signal: AbortSignal): Promise<LineState<bigint>> {
    for (let attempt = 0; attempt < 50; attempt++) {
      // core/line.ts proves a landed attempt by our lease on the key, never by counting attempts:
      // etcd3 may have re-sent the Txn unseen, and a second participant key would be a phantom.
      const res = await createUniqueKey(
        this.session,
        this.#waiters,
        [op.range(this.#waiters, { prefix: true, countOnly: true })],
        pending,
        signal,
        {
          compares: [cmp.version(this.#ready, '==', 0n)],
          failureReads: [
            op.range(this.#ready),
            op.range(this.#waiters, { prefix: true, sortTarget: 'Create', sortOrder: 'Ascend', limit: 1 }),
          ],
        },
      );
      if ('key' in res) {
        const { key, rev, reads } = res;
        // Adopted after a lost reply (no reads): learn the position as of the key's creation.
        const position = reads
          ? Number(rangeAt({ responses: reads } as TxnResult, 0).count)
          : await retryingUntil(signal, () => this.#positionAt(rev));
        if (position > this.count)
          throw new BarrierFullError(`${this.#what} already has ${this.count} participant(s) entering`);
        if (position === this.count) {
          const round = await retryingUntil(signal, () => this.#startRound(key, rev));
          log('%s: %s completed the count, round %s started', this.#what, showKey(key), round);
          return { alive: true, revision: round, data: round };
        }
        log('%s: %s entered as %d of %d, waiting', this.#what, showKey(key), position, this.count);
        if (!reads) return retryingUntil(signal, () => this.#readEnter(key, rev));
        return { alive: true, revision: rev, blocker: this.#readyBlocker(undefined) };
      }
      const [readyRes, oldestRes] = res.failure;
      const ready = readyRes?.type === 'range' ? readyRes.kvs[0] : undefined;
      const oldest = oldestRes?.type === 'range' ? oldestRes.kvs[0] : undefined;
      if (!ready) continue; // the round ended in between: try again
      if (oldest && oldest.createRevision < ready.modRevision) {
        throw new BarrierFullError(`${this.#what}: a round of ${this.count} is in progress`);
      }
      // No member of that round is left (crashed): its ready key is stale.
      await retryingUntil(signal, () => this.#removeStaleReady(ready.modRevision));
    }
    throw new BarrierFullError(`${this.#what}: could not enter (the barrier kept changing)`);
  }

  /** How many keys under `<key>/waiters/` existed at revision `rev`; count + 1 (excess) if compacted. */
  async #positionAt(rev: bigint): Promise<number> {
    try {
      const r = await range(this.session.client, this.#waiters, { prefix: true, revision: rev, countOnly: true });
      return Number(r.count);
    } catch (err) {
      if (!isCompacted(err)) throw err;
      // History is gone: we cannot prove we were within the count, so do not pass.
      return this.count + 1;
    }
  }

  /**
   * The count-th participant starts the round: create `<key>/ready` while its own key still exists.
   * Returns the round's revision.
   */
  async #startRound(key: Buffer, rev: bigint): Promise<bigint> {
    for (let i = 0; i < 10; i++) {
      const res = await txn(
        this.session.client,
        [cmp.create(key, '==', rev), cmp.version(this.#ready, '==', 0n)],
        [op.put(this.#ready, '')],
        [op.range(key), op.range(this.#ready)],
      );
      if (res.succeeded) return res.revision;
      const mine = rangeAt(res, 0).kvs[0];
      const ready = rangeAt(res, 1).kvs[0];
      if (!mine || mine.createRevision !== rev) {
        throw new SessionExpiredError(`${this.#what}: our key is gone; the session's lease expired while entering`);
      }
      // Someone else completed the count (created after us, while an earlier one dropped out),
      // or a retry whose first attempt landed. ready was absent when our key was created.
      if (ready && ready.modRevision > rev) return ready.modRevision;
    }
    throw new InternalError(`${this.#what}: could not start the round`);
  }

  /** Waiting to enter: own key (liveness) and `<key>/ready` in one request. Data: the round's revision. */
  async #readEnter(key: Buffer, rev: bigint): Promise<LineState<bigint>> {
    const res = await txn(this.session.client, [], [op.range(key), op.range(this.#ready)]);
    const mine = rangeAt(res, 0).kvs[0];
    const ready = rangeAt(res, 1).kvs[0];
    const alive = !!mine && mine.createRevision === rev;
    // ready was absent when our key was created, so a ready key newer than it starts our round.
    if (ready && ready.modRevision > rev) return { alive, revision: res.revision, data: ready.modRevision };
    return { alive, revision: res.revision, blocker: this.#readyBlocker(ready) };
  }

  #readyBlocker(ready: KeyValue | undefined): WatchTarget {
    return { kind: 'key', key: this.#ready, createRevision: ready?.createRevision ?? 0n, anyEvent: true };
  }

  /**
   * Leaving: own key, the oldest and newest remaining members of the round
   * (keys created before the round started) and the ready key, in one request.
   * In line, the blocker is the newest member while we are the oldest; out
   * of line, it is the oldest member.
   */
  async #readLeave(me: Participant, inLine: boolean): Promise<LineState<LeaveView>> {
    const members = { prefix: true, maxCreateRevision: me.round - 1n, limit: 1 } as const;
    const res = await txn(
      this.session.client,
      [],
      [
        op.range(me.key),
        op.range(this.#waiters, { ...members, sortTarget: 'Create', sortOrder: 'Ascend' }),
        op.range(this.#waiters, { ...members, sortTarget: 'Create', sortOrder: 'Descend' }),
        op.range(this.#ready),
      ],
    );
    const [mine, lowest, highest, ready] = [0, 1, 2, 3].map((i) => rangeAt(res, i).kvs[0]);
    const isMe = (kv: KeyValue | undefined) => !!kv && kv.key.equals(me.key);
    const data = { alone: isMe(lowest) && isMe(highest), ready: ready?.modRevision };
    const target = (kv: KeyValue): WatchTarget => ({ kind: 'key', key: kv.key, createRevision: kv.createRevision });
    if (!inLine) return { alive: true, revision: res.revision, blocker: lowest && target(lowest), data };
    const alive = !!mine && mine.createRevision === me.rev;
    return { alive, revision: res.revision, blocker: isMe(lowest) && !data.alone ? target(highest!) : undefined, data };
  }

  /** The last member leaves: delete its key and the round's ready key in one Txn. */
  #finishRound(me: Participant): () => Promise<void> {
    return async () => {
      const res = await txn(
        this.session.client,
        [cmp.create(me.key, '==', me.rev), cmp.mod(this.#ready, '==', me.round)],
        [op.delete(me.key), op.delete(this.#ready)],
        [op.range(me.key)],
      );
      if (res.succeeded) return;
      const mine = rangeAt(res, 0).kvs[0];
      if (!mine || mine.createRevision !== me.rev) {
        // Gone while our lease lives: an earlier copy of this Txn (ours, or one etcd3 re-sent unseen)
        // landed; only we delete our key. Otherwise the lease expired and took it.
        if (await this.session.verifyLease()) return;
        throw new SessionExpiredError(`${this.#what}: our key is gone; the session's lease expired before leaving`);
      }
      // The ready key is not our round's (deleted or rewritten by someone else): leave it alone.
      await txn(this.session.client, [cmp.create(me.key, '==', me.rev)], [op.delete(me.key)]);
    };
  }

  /** Deletes `<key>/ready` if it is still the one with mod revision `rev`. */
  async #removeStaleReady(rev: bigint): Promise<void> {
    try {
      const res = await retrying(() =>
        txn(this.session.client, [cmp.mod(this.#ready, '==', rev)], [op.delete(this.#ready)]),
      );
      if (res.succeeded) log('%s: removed the ready key of round %s (its members are gone)', this.#what, rev);
    } catch (err) {
      // The next enter() removes it as well.
      log('%s: could not remove a stale ready key: %s', this.#what, (err as Error).message);
    }
  }
}
