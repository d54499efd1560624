import { randomBytes, randomInt } from 'node:crypto';
import { linkSignals, raceAbort } from './abort.js';
import type { Candidate, ClaimContext, ClaimOutcome, ClaimSource, SessionSource, Waiter } from './claim-source.js';
import { WINDOW } from './claim-source.js';
import { InternalError, isRecipeError } from './errors.js';
import { cleanUpAfter, deleteOwnKey } from './holding.js';
import { createUniqueKey, type PendingKey } from './line.js';
import { showKey } from './keys.js';
import { op, rangeAt, txn, type KeyValue, type Op, type OpResult, type RangeResult } from './kv.js';
import { retrying } from './retry.js';
import type { Session } from './session.js';
import { ChangeWatch, waitInLine } from './wait.js';
import { beyondLine, claimableInLine, idleHead, lineState, type Scan, type State } from './queue-line-state.js';

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
 * lease. Every waiter but the head waits on its predecessor (core/wait.ts
 * `waitInLine`); only the head watches the items, so one new item wakes one
 * consumer. The head claims and deletes its waiter key in one Txn, which
 * wakes the next waiter, who reads the items before it watches them.
 *
 * Exactly once over lost replies: every claim carries its proof, which the
 * failure branch reads back (Queue: a receipt holding the value; WorkQueue:
 * the claim key on our lease naming the attempt).
 */

/** After a lost race, spread this many following claims over the window. */
const CONTENTION_CLAIMS = 32;
/** The two newest waiter keys (with a `maxCreateRevision`: ours and our predecessor). */
const NEWEST = { prefix: true, sortTarget: 'Create', sortOrder: 'Descend', limit: 2, keysOnly: true } as const;

/** What one take carries from step to step. */
interface Take {
  session: Session;
  waiter?: Waiter;
  /** Our place in line from the last read; undefined: read it again. */
  state?: State;
  /** A join Txn that may still land (its key is deleted once it settled, if the take ends). */
  joining?: { pending: PendingKey; session: Session; txn: Promise<unknown> };
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

  /** Takes one item: claims it now, or waits in line until one is there. */
  async take(signal: AbortSignal | undefined): Promise<R> {
    signal?.throwIfAborted();
    this.#sessions.begin();
    const t = { waited: false, rereads: 0 } as Take;
    try {
      t.session = await this.#sessions.acquire(signal);
      let cands = this.#cache.splice(0);
      if (!cands.length && !this.#joinNext) cands = await this.#freeScan(signal);
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

  /** Waits behind our predecessor, then (at the head, with nothing to claim) for items. */
  async #wait(t: Take, signal: AbortSignal | undefined): Promise<Candidate[]> {
    const linked = linkSignals(signal, t.session.signal);
    const waiter = t.waiter!;
    try {
      let state = t.state!;
      if (state.pred) state = t.state = await this.#waitForTurn(waiter, state, linked.signal);
      if (!idleHead(state)) return [];
      const got = await this.#waitAsHead(waiter, state, linked.signal);
      t.state = got.state;
      return got.cands ?? [];
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
    const { joining, waiter } = t;
    const owner = joining?.session ?? t.session;
    if (!owner || !(waiter || joining)) return;
    const src = this.#src;
    await cleanUpAfter(
      joining?.txn ?? Promise.resolve(),
      async () => {
        const key = waiter?.key ?? joining?.pending.key;
        if (key) await deleteOwnKey(owner, key, waiter?.rev ?? joining?.pending.rev, src.log);
      },
      () => undefined,
      src.log,
    );
  }

  #scanOps(): Op[] {
    return [this.#countWaiters, ...this.#src.scanOps()];
  }

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
    const attemptId = randomBytes(9).toString('base64url');
    const ctx: ClaimContext = { session: t.session, attemptId, waiter: t.waiter, scan: this.#scanOps(), signal };
    try {
      return await src.claim(pick, ctx);
    } catch (err) {
      src.log('%s: claim of %s ended without an item: %s', src.what, showKey(pick.key), (err as Error).message);
      throw err;
    }
  }

  /** The join Txn: our waiter key, our predecessor, the candidates. A key adopted after a lost reply is read anew. */
  async #enter(
    session: Session,
    signal: AbortSignal | undefined,
    pending: PendingKey,
  ): Promise<{ waiter: Waiter; state: State }> {
    const reads = [op.range(this.#src.waitersPrefix, NEWEST), ...this.#scanOps()];
    const created = await createUniqueKey(session, this.#src.waitersPrefix, reads, pending, signal);
    const waiter = { key: created.key, rev: created.rev };
    if (!created.reads) return { waiter, state: await this.#readRetrying(waiter, signal) };
    const line = (created.reads[0] as RangeResult).kvs;
    return { waiter, state: this.#state(line, waiter, created.rev, created.reads.slice(1)) };
  }

  /** One read: our key and our predecessor (newest first, up to ours), and the candidates. */
  async #read(waiter: Waiter): Promise<State> {
    const src = this.#src;
    const line = op.range(src.waitersPrefix, { ...NEWEST, maxCreateRevision: waiter.rev });
    const res = await txn(src.client, [], [line, ...this.#scanOps()]);
    return this.#state(rangeAt(res, 0).kvs, waiter, res.revision, res.responses.slice(1));
  }

  #readRetrying(waiter: Waiter, signal: AbortSignal | undefined): Promise<State> {
    return retrying(() => this.#read(waiter), {
      signals: [signal],
      maxElapsedMs: Infinity,
      onRetry: (err) => this.#src.log('%s: read failed, retrying: %s', this.#src.what, (err as Error).message),
    });
  }

  #state(waiters: KeyValue[], waiter: Waiter, revision: bigint, scanResults: OpResult[]): State {
    const [first, pred] = waiters;
    const alive = !!first && first.key.equals(waiter.key) && first.createRevision === waiter.rev;
    return {
      alive,
      pred: alive && pred ? { key: pred.key, createRevision: pred.createRevision } : undefined,
      scan: this.#parse(scanResults),
      revision,
    };
  }

  /** Not at the head: wait on our predecessor only, until we are head or a read finds surplus candidates. */
  async #waitForTurn(waiter: Waiter, state: State, signal: AbortSignal): Promise<State> {
    const src = this.#src;
    const read = async () => lineState(await this.#read(waiter));
    const done = await waitInLine(src.client, {
      initial: lineState(state),
      read,
      signal,
      what: src.what,
      log: src.log,
    });
    return done.data!;
  }

  /**
   * Head of the line with nothing to claim: watch for candidates. Resolves
   * with candidates named by events, or with a new state (undefined: read
   * again) when a confirming read or the end of the watch says so.
   */
  async #waitAsHead(
    waiter: Waiter,
    state: State,
    signal: AbortSignal,
  ): Promise<{ cands?: Candidate[]; state?: State }> {
    const src = this.#src;
    const found: Candidate[] = [];
    let reread = false;
    const select = (events: Parameters<ClaimSource<R>['fromEvents']>[0]) => {
      const cands = src.fromEvents(events);
      if (cands === undefined) reread = true;
      else found.push(...cands);
      return reread || found.length > 0;
    };
    const watch = await retrying(() => ChangeWatch.select(src.client, src.headWatch, select, signal), {
      signals: [signal],
      maxElapsedMs: Infinity,
      onRetry: (err) => src.log('%s: watch failed, retrying: %s', src.what, (err as Error).message),
    });
    try {
      if (watch.createdRevision > state.revision && !watch.changed) {
        // The store moved between our read and the watch: anything put in between shows up here.
        const confirmed = await this.#readRetrying(waiter, signal);
        if (!idleHead(confirmed)) return { state: confirmed };
      }
      src.log('%s: head of the line, waiting for items', src.what);
      await watch.untilChanged(signal);
      return reread || !found.length ? {} : { cands: found.splice(0) };
    } finally {
      watch.close();
    }
  }
}
