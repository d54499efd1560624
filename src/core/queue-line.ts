import { randomInt } from 'node:crypto';
import { linkSignals, raceAbort } from './abort.js';
import type { Candidate, ClaimContext, ClaimOutcome, ClaimSource, SessionSource, Waiter } from './claim-source.js';
import { WINDOW } from './claim-source.js';
import { InternalError, isRecipeError } from './errors.js';
import { cleanUpAfter, deleteOwnKey } from './holding.js';
import { deletePendingKey } from './late-copy.js';
import { createUniqueKey, type PendingKey } from './line.js';
import { showKey, uniqueKey, uniqueToken } from './keys.js';
import { cmp, op, rangeAt, txn, type Compare, type Op, type OpResult, type RangeResult } from './kv.js';
import { retrying } from './retry.js';
import { writeDecided } from './receipts.js';
import type { Session } from './session.js';
import type { WatchEvent } from './watch-hub.js';
import { type FeedSub, subscribe } from './line-feed.js';
import { advance, beyondLine, claimableInLine, lineState, type Scan, type State } from './queue-line-state.js';

/*
 * The consumer side shared by Queue, PriorityQueue and WorkQueue: take one
 * item out of a set of claimable candidates, exactly once, waiting herd-free
 * while there is none. docs/queue.md ("How it works") has the whole story;
 * in short:
 *
 * Claiming. Read the oldest candidates (keys only) and claim one with a
 * guarded Txn whose failure branch re-reads them, so a lost race costs no
 * extra round trip. After a lost race, spread the next claims at random over
 * the leading interchangeable candidates. Every read also counts the waiters
 * in line; a consumer that is not the head takes only candidates beyond that
 * count (the first ones are the line's).
 *
 * Waiting. A consumer that finds nothing joins a line of waiter keys on its
 * lease. The queue's feed (core/line-feed.ts, one per process), opened
 * before the join, tells each waiter of every later change to the line and the items,
 * so a waiter knows from events what it may claim, without a read per
 * turn: the waiter with k waiters ahead takes the k-th candidate, so a new
 * item goes to the head alone. A waiter claims and deletes its waiter key in
 * one Txn, which moves the waiters behind it up.
 *
 * Exactly once over lost replies: every claim carries its proof, which the
 * failure branch reads back (Queue: a receipt holding the value; WorkQueue:
 * the claim key on our lease naming the attempt).
 *
 * A take may join the line inside another proven write of the consumer's
 * (WorkQueue: the ack of its last job, see `JoinCarrier`), saving the join's
 * round trip.
 */

/**
 * A proven write of the consumer's that carries its join (a create-if-absent
 * of the waiter key, on the session's lease, and the join's reads) in its own
 * Txn. Resolves once it landed, with the carried ops' results (undefined when
 * only a receipt proved the landing), or undefined when it landed earlier
 * without them; rejects when it did not land, or (OUTCOME_UNKNOWN) may have.
 */
export type JoinCarrier = (join: {
  compares: Compare[];
  success: Op[];
}) => Promise<{ revision: bigint; results: OpResult[] | undefined } | undefined>;

/** After a lost race, spread this many following claims over the window. */
const CONTENTION_CLAIMS = 32;
/** How many names of the waiters ahead a read returns (a waiter deeper in line reads again once they are gone). */
const AHEAD_NAMES = 64;
/** The oldest waiter keys. */
const OLDEST = { prefix: true, sortTarget: 'Create', sortOrder: 'Ascend', keysOnly: true } as const;

/** What one take carries from step to step. */
interface Take {
  session: Session;
  waiter?: Waiter;
  /** Our place in line from the last read; undefined: read it again. */
  state?: State;
  /** A join Txn that may still land (its key is deleted once it settled, if the take ends). */
  joining?: { pending: PendingKey; session: Session; txn: Promise<unknown> };
  /** The feed's events since before `state`'s read. */
  sub?: FeedSub;
  waited: boolean;
  rereads: number;
}

/**
 * The consumer side of one recipe object. Holds what several takes share: a
 * cache of candidates read by the last claim and the contention estimate.
 */
export class ConsumerLine<R> {
  readonly #src: ClaimSource<R>;
  readonly #sessions: SessionSource;
  readonly #countWaiters: Op;
  #cache: Candidate[] = [];
  #contention = 0;
  /** Skip the first read of the next take and join the line at once: nothing was free when we last looked. */
  #joinNext = false;

  constructor(src: ClaimSource<R>, sessions: SessionSource) {
    this.#src = src;
    this.#sessions = sessions;
    this.#countWaiters = op.range(src.waitersPrefix, { prefix: true, countOnly: true });
  }

  /** Takes one item: claims it now, or waits in line until one is there. `carrier` joins the line for us. */
  async take(signal: AbortSignal | undefined, carrier?: JoinCarrier): Promise<R> {
    signal?.throwIfAborted();
    this.#sessions.begin();
    const t = { waited: false, rereads: 0 } as Take;
    try {
      t.session = await this.#sessions.acquire(signal);
      let cands = this.#cache.splice(0);
      if (carrier && (await this.#joinIn(carrier, t, signal))) cands = [];
      else if (!cands.length && !this.#joinNext) cands = await this.#freeScan(signal);
      for (;;) {
        if (cands.length) {
          const out = await this.#claim(cands, t, signal);
          if (out.won) return this.#won(out, t);
          cands = await this.#lostRace(out.scan, t, signal);
          if (cands.length) continue;
        }
        cands = await this.#inLine(t, signal);
      }
    } finally {
      await this.#leave(t);
      this.#sessions.end();
    }
  }

  #won(out: ClaimOutcome<R> & { won: true }, t: Take): R {
    t.waiter = undefined; // the claim Txn deleted it
    this.#cache = out.next ? beyondLine(this.#parse(out.next)) : [];
    // The claim read the items a moment ago: if none was free then, the next take joins the line at once.
    this.#joinNext = t.waited || (!!out.next && !this.#cache.length);
    return out.result;
  }

  /**
   * A claim lost its race. In line: read our place again. Outside it: chase
   * only a real backlog (a full window of surplus); with just a few items and
   * several free consumers, racing on costs more than queueing behind the
   * head, which takes items without colliding.
   */
  async #lostRace(scanned: OpResult[], t: Take, signal: AbortSignal | undefined): Promise<Candidate[]> {
    this.#contention = CONTENTION_CLAIMS;
    if (t.waiter) {
      t.state = undefined;
      return [];
    }
    const scan = this.#parse(scanned);
    const free = beyondLine(scan);
    if (scan.incomplete && !free.length) return this.#freeScan(signal);
    return free.length < WINDOW ? [] : free;
  }

  /** One step in line: join, or re-read our place, or wait. Resolves with candidates to claim, or [] to step again. */
  async #inLine(t: Take, signal: AbortSignal | undefined): Promise<Candidate[]> {
    const src = this.#src;
    signal?.throwIfAborted();
    if (t.session.expired) {
      if (!this.#sessions.replaceable) t.session.throwIfExpired();
      t.waiter = t.state = undefined;
      t.session = await this.#sessions.acquire(signal);
    }
    if (!t.sub?.live) {
      t.sub?.close();
      t.sub = undefined;
      t.sub = await subscribe(this.#src.client, this.#src.watches, this.#src.log, signal);
      t.state = undefined;
    }
    if (!t.waiter) {
      if (!(await this.#join(t, signal))) return [];
    } else {
      t.state ??= await this.#readRetrying(t.waiter, signal);
    }
    const state = t.state!;
    if (!state.alive) {
      src.log('%s: waiter key %s is gone (lease lost?); joining again', src.what, showKey(t.waiter!.key));
      t.waiter = t.state = undefined;
      if (!this.#sessions.replaceable && t.session.expired) t.session.throwIfExpired();
      return [];
    }
    const cands = claimableInLine(state);
    if (cands.length) return cands;
    if (state.scan.incomplete) {
      // The read window was too small: read again with the window the source widened.
      if (++t.rereads > 100) throw new InternalError(`${src.what}: candidate window did not converge`);
      t.state = undefined;
      return [];
    }
    return this.#wait(t, signal);
  }

  /**
   * Creates our waiter key (a unique name on our lease, core/line.ts) and, in
   * the same Txn, reads our predecessor and the candidates. False: etcd had
   * already dropped our lease (the join wrote nothing); join again on a new one.
   */
  async #join(t: Take, signal: AbortSignal | undefined): Promise<boolean> {
    const src = this.#src;
    const s = t.session;
    const pending: PendingKey = {};
    const joining = this.#enter(s, signal, pending);
    t.joining = { pending, session: s, txn: joining };
    try {
      ({ waiter: t.waiter, state: t.state } = await raceAbort(joining, signal));
    } catch (err) {
      const lost = s.leaseError(err, src.what);
      if (lost === err || signal?.aborted || !this.#sessions.replaceable) throw lost;
      src.log('%s: lease %s gone while joining the line; joining on a new one', src.what, s.leaseHex);
      t.joining = undefined;
      return false;
    }
    t.joining = undefined;
    t.waited = true;
    return true;
  }

  /** Joins the line through `carrier`'s write. False: it landed without our join (an earlier write). */
  async #joinIn(carrier: JoinCarrier, t: Take, signal: AbortSignal | undefined): Promise<boolean> {
    const src = this.#src;
    const s = t.session;
    // Subscribed before the write, as #inLine does before a join: the feed then has every later event.
    t.sub = await subscribe(src.client, src.watches, src.log, signal);
    const pending: PendingKey = { key: uniqueKey(src.waitersPrefix) };
    const key = pending.key!;
    const txn = carrier({
      compares: [cmp.create(key, '==', 0n)],
      success: [op.put(key, '', s.leaseId), ...this.#joinReads()],
    });
    t.joining = { pending, session: s, txn };
    let landed: Awaited<typeof txn>;
    try {
      landed = await txn;
    } catch (err) {
      // Not landed, so no key of ours; only an outcome unknown leaves #leave a key to delete, once the
      // write can no longer land (a delete sent before it could be applied before it).
      if (isRecipeError(err, 'OUTCOME_UNKNOWN')) t.joining = { pending, session: s, txn: writeDecided(err) };
      else t.joining = undefined;
      throw err;
    }
    t.joining = undefined;
    if (!landed) return false;
    pending.rev = landed.revision;
    t.waiter = { key, rev: landed.revision };
    t.state = landed.results // the put's result, then the join's reads
      ? this.#joined(t.waiter, landed.results.slice(1))
      : await this.#readRetrying(t.waiter, signal);
    t.waited = true;
    return true;
  }

  /** Applies the feed's events to our state until we may claim, or only a read can tell (state undefined). */
  async #wait(t: Take, signal: AbortSignal | undefined): Promise<Candidate[]> {
    const linked = linkSignals(signal, t.session.signal);
    const sub = t.sub!;
    const update = (cands: Candidate[], items: WatchEvent[]) => this.#src.update(cands, items);
    try {
      for (;;) {
        await sub.next(linked.signal);
        const state = sub.live
          ? advance(t.state!, sub.take(), t.waiter!.key, this.#src.waitersPrefix, update)
          : undefined;
        t.state = state;
        if (!state?.alive) return [];
        const cands = claimableInLine(state);
        if (cands.length) return cands;
      }
    } catch (err) {
      // Our lease was lost while waiting: Queue gets a new one and joins again; WorkQueue gives up.
      const lost = !signal?.aborted && (t.session.expired || isRecipeError(err, 'SESSION_EXPIRED'));
      if (!lost) throw err;
      if (!this.#sessions.replaceable && t.session.expired) throw t.session.signal.reason;
      t.waiter = t.state = undefined;
      return [];
    } finally {
      linked.dispose();
    }
  }

  /** Our waiter key, or the one a join still in flight may create: deleted once that Txn settled. */
  async #leave(t: Take): Promise<void> {
    t.sub?.close();
    const { joining, waiter } = t;
    const owner = joining?.session ?? t.session;
    if (!owner || !(waiter || joining)) return;
    const src = this.#src;
    await cleanUpAfter(
      joining?.txn ?? Promise.resolve(),
      () =>
        waiter
          ? deleteOwnKey(owner, waiter.key, waiter.rev, src.log)
          : deletePendingKey(owner, joining!.pending, src.log),
      () => undefined,
      src.log,
    );
  }

  #scanOps(): Op[] {
    return [this.#countWaiters, ...this.#src.scanOps()];
  }

  /**
   * A scan from its responses: first a range over the waiter keys, whose
   * count is the waiters in line (etcd counts the whole range, before its
   * limit and revision filters), then the source's own.
   */
  #parse(results: OpResult[]): Scan {
    const count = results[0];
    if (count?.type !== 'range') throw new InternalError('scan response is not a range');
    return { ...this.#src.parseScan(results.slice(1)), waiters: Number(count.count) };
  }

  /** Reads the candidates a consumer outside the line may take (the surplus beyond the line). */
  async #freeScan(signal: AbortSignal | undefined): Promise<Candidate[]> {
    const src = this.#src;
    for (let i = 0; i < 100; i++) {
      const res = await retrying(() => txn(src.client, [], this.#scanOps()), {
        signals: [signal],
        maxElapsedMs: Infinity,
      });
      const scan = this.#parse(res.responses);
      const free = beyondLine(scan);
      if (free.length || !scan.incomplete) return free;
    }
    throw new InternalError(`${src.what}: candidate window did not converge`);
  }

  /** One claim of one of `cands` (the head, or a random interchangeable one under contention). */
  async #claim(cands: Candidate[], t: Take, signal: AbortSignal | undefined): Promise<ClaimOutcome<R>> {
    const src = this.#src;
    let pick = cands[0]!;
    if (this.#contention > 0) {
      this.#contention--;
      const n = Math.min(src.interchangeable(cands), WINDOW);
      if (n > 1) pick = cands[randomInt(n)]!;
    }
    const attemptId = uniqueToken();
    const ctx: ClaimContext = { session: t.session, attemptId, waiter: t.waiter, scan: this.#scanOps(), signal };
    try {
      return await src.claim(pick, ctx);
    } catch (err) {
      src.log('%s: claim of %s ended without an item: %s', src.what, showKey(pick.key), (err as Error).message);
      throw err;
    }
  }

  /** The join Txn: our waiter key, the waiters ahead, the candidates. A key adopted after a lost reply is read anew. */
  async #enter(
    session: Session,
    signal: AbortSignal | undefined,
    pending: PendingKey,
  ): Promise<{ waiter: Waiter; state: State }> {
    const created = await createUniqueKey(session, this.#src.waitersPrefix, this.#joinReads(), pending, signal);
    const waiter = { key: created.key, rev: created.rev };
    if (!created.reads) return { waiter, state: await this.#readRetrying(waiter, signal) };
    return { waiter, state: this.#joined(waiter, created.reads) };
  }

  /** A join's reads, after its put: the oldest waiter keys (`#parse` takes their count) and the candidates. */
  #joinReads(): Op[] {
    return [op.range(this.#src.waitersPrefix, { ...OLDEST, limit: AHEAD_NAMES + 1 }), ...this.#src.scanOps()];
  }

  /** Our state from the join's reads: every other waiter is ahead of us, we are the newest. */
  #joined(waiter: Waiter, reads: OpResult[]): State {
    const line = reads[0] as RangeResult;
    const scan = this.#parse(reads);
    return lineState(true, line.kvs, scan.waiters - 1, waiter.key, this.#src.waitersPrefix, waiter.rev, scan);
  }

  /** One read: our key, the waiters ahead of it (their count and the oldest names), and the candidates. */
  async #read(waiter: Waiter): Promise<State> {
    const src = this.#src;
    const older = op.range(src.waitersPrefix, { ...OLDEST, limit: AHEAD_NAMES, maxCreateRevision: waiter.rev - 1n });
    const res = await txn(src.client, [], [op.range(waiter.key, { keysOnly: true }), older, ...src.scanOps()]);
    const own = rangeAt(res, 0).kvs[0];
    const line = rangeAt(res, 1).kvs;
    // etcd counts a range before its revision filter: a full page says only "at least that many" ahead.
    const ahead = line.length < AHEAD_NAMES ? line.length : line.length + 1;
    const scan = this.#parse(res.responses.slice(1)); // `older` counts the waiters
    return lineState(
      own?.createRevision === waiter.rev,
      line,
      ahead,
      waiter.key,
      this.#src.waitersPrefix,
      res.revision,
      scan,
    );
  }

  #readRetrying(waiter: Waiter, signal: AbortSignal | undefined): Promise<State> {
    return retrying(() => this.#read(waiter), {
      signals: [signal],
      maxElapsedMs: Infinity,
      onRetry: (err) => this.#src.log('%s: read failed, retrying: %s', this.#src.what, (err as Error).message),
    });
  }
}
