import { randomBytes, randomInt } from 'node:crypto';
import type { Namespace } from 'etcd3';
import type { Logger } from './log.js';
import { linkSignals, raceAbort, untilWoken } from './abort.js';
import { isRecipeError, SessionExpiredError } from './errors.js';
import type { ResolvedGuard } from './guard.js';
import { cleanUpAfter, deleteOwnKey } from './holding.js';
import { createUniqueKey, type PendingKey } from './line.js';
import { showKey } from './keys.js';
import { cmp, op, rangeAt, txn, type Compare, type KeyValue, type Op, type OpResult, type RangeResult } from './kv.js';
import type { ReceiptBook } from './receipts.js';
import { retrying } from './retry.js';
import { createOwnedSession, type Session } from './session.js';
import { ChangeWatch } from './wait.js';
import { openWatch, type WatchEvent, type WatchHandle, type WatchSpec } from './watch-hub.js';

/*
 * The consumer side shared by Queue, PriorityQueue and WorkQueue: take one
 * item out of a set of claimable candidates, exactly once, waiting herd-free
 * while there is none.
 *
 * Claiming. A consumer reads the oldest candidates (keys only, one request)
 * and claims one with a guarded Txn (Queue: delete if the item still has the
 * mod revision we read; WorkQueue: create the claim key if absent). A lost
 * race costs nothing extra: the Txn's failure branch re-reads the candidates
 * in the same round trip. A consumer that lost a race recently spreads its
 * next claims at random over the leading candidates that are interchangeable
 * (same priority), so competing consumers stop colliding on the head; one
 * consumer alone always takes the head, in order. Every read also counts the
 * waiters in line, and a consumer that is not the head of the line only takes
 * candidates beyond that count: the first ones belong to the line, whose head
 * was woken for them.
 *
 * Waiting. A consumer that finds nothing joins a line of waiter keys
 * (`<waiters>/<unique>`, attached to a lease, ordered by create revision).
 * Only the head of the line watches the items; every other waiter watches
 * just its predecessor's key (core/wait.ts), as a Mutex waiter does. A new
 * item therefore wakes one consumer, not all of them. The head claims the
 * item and deletes its own waiter key in the same Txn, which wakes the next
 * waiter, who reads the items before it watches them.
 *
 * Why no item and no wake-up is lost: items are durable keys, so the only
 * risk is that every consumer waits while an item is there. The head of the
 * line always reads the items after it became head and before it waits on
 * its watch, and that watch starts no later than that read (a watch from
 * "now" plus a confirming read when the store moved in between, as in
 * core/wait.ts). A consumer that is not waiting reads before it joins. A
 * watch that etcd cancels (compaction, a broken stream it cannot resume) is a
 * wake-up too: the waiter re-reads and watches again.
 *
 * Exactly once over lost replies. etcd3 may re-send a Txn whose reply was
 * lost, and our own retry does too; the retried claim then fails its compare
 * although the first try succeeded. Every claim therefore carries its proof,
 * which the failure branch reads back. Queue: a receipt (core/receipts.ts)
 * that also holds the item's value, with no lease, so an outage of any length
 * or a compaction cannot take the proof or the value away. WorkQueue: the
 * claim key itself, on the claimer's lease, whose value names the attempt.
 *
 * The waiter line lives on a lease (the queue's own, for Queue), but nothing
 * that delivers an item depends on it: a line key refused because etcd
 * already dropped that lease only sends the consumer back to join again.
 */

/** A claimable item: its key and the revision the claim compares against. */
export interface Candidate {
  key: Buffer;
  /** Mod revision (Queue, PriorityQueue) or create revision (WorkQueue jobs). */
  rev: bigint;
  /** The item's value at `rev`, when the read that found it carried it. */
  value?: Buffer;
}

/** What a recipe's own scan ops found. */
export interface SourceScan {
  /** Claimable candidates, in delivery order. */
  cands: Candidate[];
  /** True when the read window held no claimable candidate but more keys exist: read again. */
  incomplete?: boolean;
}

/** The candidates found by one read, and how many consumers wait in line at that revision. */
export interface Scan extends SourceScan {
  waiters: number;
}

/** A consumer's own waiter key. */
export interface Waiter {
  key: Buffer;
  rev: bigint;
}

/** What a claim attempt knows. */
export interface ClaimContext {
  session: Session;
  /** Unique per claim attempt (the same across retries of that attempt). */
  attemptId: string;
  /** The consumer's waiter key, to delete in the claim Txn. */
  waiter: Waiter | undefined;
  /** Range ops that re-read the candidates; put them last in a branch and hand back their responses. */
  scan: Op[];
  /** The caller's signal. */
  signal: AbortSignal | undefined;
}

export type ClaimOutcome<R> = { won: true; result: R; next?: OpResult[] } | { won: false; scan: OpResult[] };

/** What a recipe tells the line about its items. */
export interface ClaimSource<R> {
  readonly client: Namespace;
  readonly what: string;
  readonly log: Logger;
  /** Prefix of the waiter keys (ends with '/'). */
  readonly waitersPrefix: Buffer;
  /** What the head of the line watches for new candidates. */
  readonly headWatch: WatchSpec;
  /** Range ops (inside a Txn) that read the candidates. */
  scanOps(): Op[];
  /** Candidates from the responses of {@link scanOps}. */
  parseScan(results: OpResult[]): SourceScan;
  /** Candidates named by watch events; [] when irrelevant, undefined when a re-read is needed. */
  fromEvents(events: WatchEvent[]): Candidate[] | undefined;
  /** How many leading candidates may be taken in any order (e.g. those of the first one's priority). */
  interchangeable(cands: Candidate[]): number;
  /**
   * One claim, seen through until its outcome is known (the source retries
   * transient errors itself, with its own proof). Rejects only when the
   * outcome cannot be had: the session it depends on is lost, the signal
   * aborted (after voiding the claim), or the client closed.
   */
  claim(c: Candidate, ctx: ClaimContext): Promise<ClaimOutcome<R>>;
}

/** Where a take gets its lease from. */
export interface SessionSource {
  /** A live session; may create one. */
  acquire(signal: AbortSignal | undefined): Promise<Session>;
  /** True when a lost session may be replaced by a new one (Queue); false ends the take (WorkQueue). */
  readonly replaceable: boolean;
  /** A take starts / ends (for idle handling). */
  begin(): void;
  end(): void;
}

/** How many leading candidates a read returns (keys only). */
export const WINDOW = 16;
/** After a lost race, spread this many following claims over the window. */
const CONTENTION_CLAIMS = 32;

interface State {
  /** Our waiter key still exists with our create revision. */
  alive: boolean;
  /** The waiter just ahead of us, if any. */
  pred?: { key: Buffer; createRevision: bigint };
  scan: Scan;
  revision: bigint;
}

/** Compare a key's lease. */
export function leaseIs(key: Buffer, leaseId: string): Compare {
  return { key, target: 'Lease', result: '==', value: leaseId };
}

/** A fresh token for one claim attempt. */
function newAttemptId(): string {
  return randomBytes(9).toString('base64url');
}

/**
 * Candidates left over once every waiter in line has one: the first
 * `waiters` candidates are the line's, and a consumer that is not at its
 * head takes only what lies beyond them. So a consumer arriving at a queue
 * with a line never races the head for the item the head was woken for.
 */
function beyondLine(scan: Scan): Candidate[] {
  return scan.cands.length > scan.waiters ? scan.cands.slice(scan.waiters) : [];
}

/** What a consumer in line may claim now: everything at the head, the surplus elsewhere. */
function claimableInLine(state: State): Candidate[] {
  if (!state.alive) return [];
  return state.pred ? beyondLine(state.scan) : state.scan.cands;
}

/** True when `state` is the head of the line with nothing to claim: time to watch the items. */
function idleHead(state: State): boolean {
  return state.alive && !state.pred && !state.scan.cands.length && !state.scan.incomplete;
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

  #scanOps(): Op[] {
    return [this.#countWaiters, ...this.#src.scanOps()];
  }

  #parse(results: OpResult[]): Scan {
    const count = results[0];
    if (count?.type !== 'range') throw new Error('internal: scan response is not a range');
    return { ...this.#src.parseScan(results.slice(1)), waiters: Number(count.count) };
  }

  /** Takes one item: claims it now, or waits in line until one is there. */
  async take(signal: AbortSignal | undefined): Promise<R> {
    signal?.throwIfAborted();
    const src = this.#src;
    this.#sessions.begin();
    let session: Session | undefined;
    let waiter: Waiter | undefined;
    // The key of a join Txn that may still land, and that Txn.
    const track: { joining?: { pending: PendingKey; session: Session; txn: Promise<unknown> } } = {};
    let waited = false;
    let state: State | undefined;
    let cands: Candidate[] = this.#cache.splice(0);
    let rereads = 0;
    try {
      session = await this.#sessions.acquire(signal);
      if (!cands.length && !this.#joinNext) cands = await this.#freeScan(signal);
      for (;;) {
        if (cands.length) {
          const out = await this.#claim(cands, session, waiter, signal);
          if (out.won) {
            waiter = undefined; // the claim Txn deleted it
            this.#cache = out.next ? beyondLine(this.#parse(out.next)) : [];
            // The claim read the items a moment ago: if none was free then, the next take joins the line at once.
            this.#joinNext = waited || (!!out.next && !this.#cache.length);
            return out.result;
          }
          this.#contention = CONTENTION_CLAIMS;
          cands = [];
          if (!waiter) {
            const scan = this.#parse(out.scan);
            cands =
              scan.incomplete && !beyondLine(scan).length
                ? await this.#freeScan(signal)
                : this.#surplus(beyondLine(scan));
            if (cands.length) continue;
          }
          state = undefined; // in line: read our place again
        }
        signal?.throwIfAborted();
        if (session.expired) {
          if (!this.#sessions.replaceable) session.throwIfExpired();
          waiter = undefined;
          state = undefined;
          session = await this.#sessions.acquire(signal);
        }
        if (!waiter) {
          const s = session;
          const pending: PendingKey = {};
          const joining = this.#join(s, signal, pending);
          track.joining = { pending, session: s, txn: joining };
          let joined: { waiter: Waiter; state: State };
          try {
            joined = await raceAbort(joining, signal);
          } catch (err) {
            // etcd dropped the lease before our session noticed: the join wrote nothing.
            const lost = s.leaseError(err, src.what);
            if (lost === err || signal?.aborted || !this.#sessions.replaceable) throw lost;
            src.log('%s: lease %s gone while joining the line; joining on a new one', src.what, s.leaseHex);
            track.joining = undefined;
            continue;
          }
          track.joining = undefined;
          waiter = joined.waiter;
          state = joined.state;
          waited = true;
        } else if (!state) {
          state = await this.#readRetrying(waiter, signal);
        }
        if (!state.alive) {
          src.log('%s: waiter key %s is gone (lease lost?); joining again', src.what, showKey(waiter.key));
          waiter = undefined;
          state = undefined;
          if (!this.#sessions.replaceable && session.expired) session.throwIfExpired();
          continue;
        }
        cands = claimableInLine(state);
        if (cands.length) continue;
        if (state.scan.incomplete) {
          // The read window was too small: read again with the window the source widened.
          if (++rereads > 100) throw new Error(`${src.what}: candidate window did not converge`);
          state = undefined;
          continue;
        }
        const linked = linkSignals(signal, session.signal);
        try {
          let opened: EventWatch | undefined;
          if (state.pred) ({ state, watch: opened } = await this.#waitForTurn(waiter, state, linked.signal));
          if (idleHead(state)) {
            const got = await this.#waitAsHead(waiter, state, linked.signal, opened);
            if (got.cands) cands = got.cands;
            else state = got.state;
          } else {
            opened?.close();
          }
        } catch (err) {
          // Our lease was lost while waiting: Queue gets a new one and joins again; WorkQueue gives up.
          const sessionLost = session.expired && !signal?.aborted;
          const keyGone = isRecipeError(err, 'SESSION_EXPIRED') && !signal?.aborted;
          if (!sessionLost && !keyGone) throw err;
          if (!this.#sessions.replaceable && session.expired) throw session.signal.reason;
          waiter = undefined;
          state = undefined;
        } finally {
          linked.dispose();
        }
      }
    } finally {
      // Our waiter key, or the one a join still in flight may create: delete it once that Txn settled.
      const joining = track.joining;
      const owner = joining?.session ?? session;
      const own = waiter;
      if (owner && (own || joining)) {
        await cleanUpAfter(
          joining?.txn ?? Promise.resolve(),
          async () => {
            const key = own?.key ?? joining?.pending.key;
            if (key) await deleteOwnKey(owner, key, own?.rev ?? joining?.pending.rev, src.log);
          },
          () => undefined,
          src.log,
        );
      }
      this.#sessions.end();
    }
  }

  /**
   * After a lost race, a consumer outside the line only chases a real backlog
   * (a full window of surplus). With just a few items and several free
   * consumers, racing on costs more than queueing: it joins the line, whose
   * head takes items without colliding.
   */
  #surplus(free: Candidate[]): Candidate[] {
    return free.length < WINDOW ? [] : free;
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
    throw new Error(`${src.what}: candidate window did not converge`);
  }

  /**
   * One claim of one of `cands` (the head, or a random interchangeable one
   * under contention), seen through by the source until its outcome is known.
   */
  async #claim(
    cands: Candidate[],
    session: Session,
    waiter: Waiter | undefined,
    signal: AbortSignal | undefined,
  ): Promise<ClaimOutcome<R>> {
    const src = this.#src;
    let pick = cands[0]!;
    if (this.#contention > 0) {
      this.#contention--;
      const n = Math.min(src.interchangeable(cands), WINDOW);
      if (n > 1) pick = cands[randomInt(n)]!;
    }
    const ctx: ClaimContext = { session, attemptId: newAttemptId(), waiter, scan: this.#scanOps(), signal };
    try {
      return await src.claim(pick, ctx);
    } catch (err) {
      src.log('%s: claim of %s ended without an item: %s', src.what, showKey(pick.key), (err as Error).message);
      throw err;
    }
  }

  /**
   * Creates our waiter key (a unique name on our lease, core/line.ts) and, in
   * the same Txn, reads our predecessor and the candidates. A key adopted
   * after a lost reply is read anew.
   */
  async #join(
    session: Session,
    signal: AbortSignal | undefined,
    pending: PendingKey,
  ): Promise<{ waiter: Waiter; state: State }> {
    const src = this.#src;
    const reads = [
      op.range(src.waitersPrefix, {
        prefix: true,
        sortTarget: 'Create',
        sortOrder: 'Descend',
        limit: 2,
        keysOnly: true,
      }),
      ...this.#scanOps(),
    ];
    const created = await createUniqueKey(session, src.waitersPrefix, reads, pending, signal);
    const waiter = { key: created.key, rev: created.rev };
    if (!created.reads) return { waiter, state: await this.#readRetrying(waiter, signal) };
    return {
      waiter,
      state: this.#state((created.reads[0] as RangeResult).kvs, waiter, created.rev, created.reads.slice(1)),
    };
  }

  /** One read: our key and our predecessor (newest first, up to ours), and the candidates. */
  async #read(waiter: Waiter): Promise<State> {
    const src = this.#src;
    const res = await txn(
      src.client,
      [],
      [
        op.range(src.waitersPrefix, {
          prefix: true,
          maxCreateRevision: waiter.rev,
          sortTarget: 'Create',
          sortOrder: 'Descend',
          limit: 2,
          keysOnly: true,
        }),
        ...this.#scanOps(),
      ],
    );
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

  /**
   * Not at the head: wait on our predecessor only (one key, for its
   * deletion), until we are head or a read finds surplus candidates. When
   * the predecessor goes, open the head's watch on the items first and read
   * second: if that read says we are head with nothing to claim, the watch
   * already covers everything after it, and no confirming read is needed.
   */
  async #waitForTurn(waiter: Waiter, state: State, signal: AbortSignal): Promise<{ state: State; watch?: EventWatch }> {
    const src = this.#src;
    const settled = (s: State) => !s.alive || !s.pred || claimableInLine(s).length > 0 || !!s.scan.incomplete;
    for (;;) {
      const pred = state.pred!;
      const target = { kind: 'key' as const, key: pred.key, createRevision: pred.createRevision };
      const pw = await retrying(() => ChangeWatch.open(src.client, target, signal), {
        signals: [signal],
        maxElapsedMs: Infinity,
        onRetry: (err) => src.log('%s: watch failed, retrying: %s', src.what, (err as Error).message),
      });
      try {
        if (pw.createdRevision > state.revision && !pw.changed) {
          // The store moved between our read and the watch: was our predecessor deleted in between?
          const s = await this.#readRetrying(waiter, signal);
          if (settled(s) || !samePred(s, pred)) return { state: s };
          state = s;
        }
        src.log('%s: waiting behind %s', src.what, showKey(pred.key));
        await pw.untilChanged(signal);
      } finally {
        pw.close();
      }
      // Both at once: if the watch was created after the read, #waitAsHead confirms with one more read.
      const opening = this.#openHeadWatch(signal);
      const reading = this.#readRetrying(waiter, signal);
      const [w, r] = await Promise.allSettled([opening, reading]);
      if (w.status === 'rejected' || r.status === 'rejected') {
        if (w.status === 'fulfilled') w.value.close();
        throw w.status === 'rejected' ? w.reason : (r as PromiseRejectedResult).reason;
      }
      const s = r.value;
      if (settled(s)) {
        if (idleHead(s)) return { state: s, watch: w.value };
        w.value.close();
        return { state: s };
      }
      w.value.close();
      state = s; // an earlier waiter left: wait on the new predecessor
    }
  }

  #openHeadWatch(signal: AbortSignal): Promise<EventWatch> {
    const src = this.#src;
    return retrying(() => EventWatch.open(src.client, src.headWatch, (evs) => src.fromEvents(evs), signal), {
      signals: [signal],
      maxElapsedMs: Infinity,
      onRetry: (err) => src.log('%s: watch failed, retrying: %s', src.what, (err as Error).message),
    });
  }

  /**
   * Head of the line with nothing to claim: watch for candidates. Resolves
   * with candidates named by events, or with a new state (undefined: read
   * again) when a confirming read or the end of the watch says so. `opened`
   * is a watch created before the read that produced `state`.
   */
  async #waitAsHead(
    waiter: Waiter,
    state: State,
    signal: AbortSignal,
    opened?: EventWatch,
  ): Promise<{ cands?: Candidate[]; state?: State }> {
    const src = this.#src;
    const watch = opened ?? (await this.#openHeadWatch(signal));
    try {
      if (watch.createdRevision > state.revision && !watch.ready) {
        // The store moved between our read and the watch: anything put in between shows up here.
        const confirmed = await this.#readRetrying(waiter, signal);
        if (!idleHead(confirmed)) return { state: confirmed };
      }
      src.log('%s: head of the line, waiting for items', src.what);
      const cands = await watch.next(signal);
      return cands ? { cands } : {};
    } finally {
      watch.close();
    }
  }
}

function samePred(s: State, pred: { key: Buffer; createRevision: bigint }): boolean {
  return !!s.pred && s.pred.key.equals(pred.key) && s.pred.createRevision === pred.createRevision;
}

/**
 * One watch from "now" that collects the candidates its events name. The
 * end of the watch (compaction, cancellation) asks for a re-read.
 */
class EventWatch {
  readonly createdRevision: bigint;
  readonly #handle: WatchHandle;
  readonly #select: (events: WatchEvent[]) => Candidate[] | undefined;
  #pending: Candidate[] = [];
  #reread = false;
  #wake: (() => void) | undefined;

  private constructor(handle: WatchHandle, select: (events: WatchEvent[]) => Candidate[] | undefined) {
    this.#handle = handle;
    this.createdRevision = handle.createdRevision;
    this.#select = select;
  }

  static async open(
    client: Namespace,
    spec: WatchSpec,
    select: (events: WatchEvent[]) => Candidate[] | undefined,
    signal: AbortSignal,
  ): Promise<EventWatch> {
    let self: EventWatch | undefined;
    const early: WatchEvent[][] = [];
    let ended = false;
    const handle = await openWatch(
      client,
      spec,
      {
        onEvents: (events) => {
          if (self) self.#push(events);
          else early.push(events);
        },
        onEnd: () => {
          if (self) self.#end();
          else ended = true;
        },
      },
      signal,
    );
    self = new EventWatch(handle, select);
    for (const evs of early) self.#push(evs);
    if (ended) self.#end();
    return self;
  }

  get ready(): boolean {
    return this.#reread || this.#pending.length > 0;
  }

  #push(events: WatchEvent[]): void {
    const found = this.#select(events);
    if (found === undefined) this.#reread = true;
    else if (found.length) this.#pending.push(...found);
    else return;
    this.#wake?.();
  }

  #end(): void {
    this.#reread = true;
    this.#wake?.();
  }

  /** Candidates, or undefined when a re-read is needed. Rejects with the signal's reason. */
  async next(signal: AbortSignal): Promise<Candidate[] | undefined> {
    if (!this.ready)
      await untilWoken(signal, (wake) => {
        this.#wake = wake;
      });
    if (this.#reread) return undefined;
    return this.#pending.splice(0);
  }

  close(): void {
    this.#wake = undefined;
    this.#handle.close();
  }
}

/**
 * The lease of a Queue or PriorityQueue, which take a client rather than a
 * session: created on the first dequeue, shared by every dequeue of the
 * object, replaced when lost, and revoked after `idleMs` without a dequeue
 * (or by `close()`). Its keys (waiters, receipts) vanish with it.
 */
export class OwnSession implements SessionSource {
  readonly replaceable = true;
  readonly #client: Namespace;
  readonly #ttl: number;
  readonly #idleMs: number;
  readonly #log: Logger;
  #session: Session | undefined;
  #creating: Promise<Session> | undefined;
  #users = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(client: Namespace, ttl: number, idleMs: number, log: Logger) {
    this.#client = client;
    this.#ttl = ttl;
    this.#idleMs = idleMs;
    this.#log = log;
  }

  /** The current session, if any (for tests and stats). */
  get current(): Session | undefined {
    return this.#session;
  }

  begin(): void {
    this.#users++;
    clearTimeout(this.#idleTimer);
  }

  end(): void {
    if (--this.#users > 0) return;
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      if (this.#users === 0) void this.#drop();
    }, this.#idleMs).unref();
  }

  async acquire(signal: AbortSignal | undefined): Promise<Session> {
    if (this.#closed) throw new SessionExpiredError('queue closed');
    const live = this.#session;
    if (live && !live.expired) return live;
    this.#creating ??= (async () => {
      try {
        const create = () =>
          retrying(() => createOwnedSession(this.#client, { ttl: this.#ttl }), { maxElapsedMs: Infinity });
        let s = await create();
        // A grant that took longer than its TTL (a long outage) hands back a session already given up.
        for (let i = 0; s.expired && i < 100; i++) s = await create();
        this.#log('own lease %s granted', s.leaseHex);
        if (this.#closed) {
          await s.close();
          throw new SessionExpiredError('queue closed');
        }
        this.#session = s;
        return s;
      } finally {
        this.#creating = undefined;
      }
    })();
    return raceAbort(this.#creating, signal);
  }

  async #drop(): Promise<void> {
    const s = this.#session;
    this.#session = undefined;
    if (s) {
      this.#log('own lease %s idle: revoking', s.leaseHex);
      await s.close();
    }
  }

  /** Revokes the lease (deleting its keys); later takes fail. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    await this.#creating?.catch(() => undefined);
    await this.#drop();
  }
}

/** A caller's Session (WorkQueue): never replaced; its loss ends the take. */
export class GivenSession implements SessionSource {
  readonly replaceable = false;
  readonly #session: Session;

  constructor(session: Session) {
    this.#session = session;
  }

  acquire(): Promise<Session> {
    this.#session.throwIfExpired();
    return Promise.resolve(this.#session);
  }

  begin(): void {}
  end(): void {}
}

/**
 * Creates `makeKey()` with `value` if absent (Go's `putNewKV`), retrying
 * with a new name on a collision, as one proven write (core/receipts.ts): a
 * lost reply is settled by the write's receipt, never by looking at the item,
 * which a consumer may already have taken. With a guard, the item is created
 * only while the guard holds; otherwise nothing is written and the guard's
 * error is thrown.
 * @returns the item's key
 */
export async function createItem(
  book: ReceiptBook,
  makeKey: () => Buffer,
  value: Buffer,
  guard: ResolvedGuard,
  what: string,
  signal: AbortSignal | undefined,
): Promise<Buffer> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const key = makeKey();
    const out = await book.write(
      {
        compares: [cmp.create(key, '==', 0n), ...guard.compares],
        success: [op.put(key, value)],
        failure: [op.range(key, { keysOnly: true }), ...guard.reads],
      },
      { signal, what },
    );
    if (out.landed) return key;
    const [taken, ...reads] = out.failure;
    if (taken?.type === 'range' && taken.kvs.length) continue; // the same name from another writer
    if (!guard.holds(reads)) throw guard.error(what);
  }
  throw new Error(`${what}: could not create a unique key`);
}
