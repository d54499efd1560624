import { InvalidArgumentError } from '../core/errors.js';
import { Holding, type HeldKey } from '../core/holding.js';
import { childPrefix, showKey, uniqueKey } from '../core/keys.js';
import { cmp, op, range, rangeAt, txn, type KeyValue, type Op, type TxnResult } from '../core/kv.js';
import { joinLine, MAX_UNIQUE_ATTEMPTS, type PendingKey } from '../core/line.js';
import { logger } from '../core/log.js';
import { retrying } from '../core/retry.js';
import { checkSession, type Session } from '../core/session.js';
import { checkInteger, checkName, checkOptions, checkSignal } from '../core/validate.js';
import type { LineState } from '../core/wait.js';

const log = logger('semaphore');

/**
 * The largest permit count accepted. Every read of a waiter returns up to
 * `permits + 1` keys (names only), so the count is bounded to keep those
 * reads small.
 */
export const MAX_PERMITS = 10_000;

/** Options of {@link Semaphore.acquire}. */
export interface PermitOptions {
  /** Abort the wait; the call then rejects with the signal's reason and leaves no key behind. */
  signal?: AbortSignal;
}

/** A held permit, from {@link Semaphore.acquire}. Dispose it (or call `release()`) to give the permit back. */
export type PermitHandle = HeldKey;

/** How a semaphore is used right now, from {@link Semaphore.usage}. */
export interface SemaphoreUsage {
  /** Permits held (at most `permits`). */
  holders: number;
  /** Callers queued for a permit. */
  waiters: number;
}


/** What a waiter's read tells it beyond "blocked or not": who to wake once it holds. */
interface LineData {
  /** Our own key as read (its mod revision shows whether someone touched it already). */
  own: KeyValue;
  /** Our place in line, 0-based; `permits` or more means waiting. */
  place: number;
  /** The keys right behind ours, oldest first (at most `min(permits - 1, WAKE_AHEAD)`). */
  behind: KeyValue[];
}

/** How many waiters behind it an admitted waiter wakes at most in one go (see `#wakeBehind`). */
const WAKE_AHEAD = 32;

/**
 * A distributed counting semaphore: at most `permits` holders at a time,
 * served in FIFO order. Each `acquire()` writes one key
 * `<name>/queue/<19-digit ns>` (empty value, attached to the session's lease);
 * the first `permits` keys under `<name>/queue/` by create revision hold a
 * permit. The permit count is stored once, at first use, in `<name>/permits`,
 * and an acquire whose count differs is rejected with `INVALID_ARGUMENT`
 * before it queues.
 *
 * Herd-free: a release wakes exactly one waiter. The first waiter (exactly
 * `permits` keys ahead) watches deletions under `<name>/queue/`; every later
 * waiter watches only its immediate predecessor (deletion or a put). A waiter
 * that becomes a holder after waiting re-puts its own key unchanged (a
 * "touch"), which wakes the waiter behind it to take over the first place.
 *
 * Keys are unique per call, so one session can hold any number of permits at
 * once (one handle each); no in-process queueing is involved.
 */
export class Semaphore {
  /** The session whose lease owns the permit keys. */
  readonly session: Session;
  /** The semaphore's name; its keys live under `<name>/`. */
  readonly name: string | Buffer;
  /** How many holders at most; must match the count stored for this name. */
  readonly permits: number;
  readonly #queueDir: Buffer;
  readonly #permitsKey: Buffer;

  /**
   * @param session - the session whose lease the permit keys are attached to
   * @param name - the semaphore's name; keys live under `<name>/`
   * @param permits - how many holders at most (integer, 1 to {@link MAX_PERMITS});
   *   every process using this name must pass the same count
   * @throws InvalidArgumentError on an empty name, a non-Session or a bad count
   */
  constructor(session: Session, name: string | Buffer, permits: number) {
    checkSession(session);
    checkName(name, 'name');
    checkInteger(permits, 'permits', 1, MAX_PERMITS);
    this.session = session;
    this.name = name;
    this.permits = permits;
    const prefix = childPrefix(name);
    this.#queueDir = Buffer.concat([prefix, Buffer.from('queue/')]);
    this.#permitsKey = Buffer.concat([prefix, Buffer.from('permits')]);
  }

  /** The key storing the permit count: `<name>/permits`. */
  get permitsKey(): string {
    return this.#permitsKey.toString();
  }

  /** The prefix of holder and waiter keys: `<name>/queue/`. */
  get queuePrefix(): string {
    return this.#queueDir.toString();
  }

  /**
   * Blocks until a permit is held and returns a handle for it (its key,
   * fencing token, signal and release). FIFO among waiters. Use with
   * `await using`.
   * @throws InvalidArgumentError if `<name>/permits` holds another count (nothing is written)
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  acquire(options: PermitOptions = {}): Promise<PermitHandle> {
    return this.#acquire(options, true) as Promise<PermitHandle>;
  }

  /**
   * Takes a permit if one is free right now and nobody waits; never waits.
   * @returns the handle, or undefined (leaving no key behind)
   * @throws InvalidArgumentError if `<name>/permits` holds another count
   */
  tryAcquire(options: PermitOptions = {}): Promise<PermitHandle | undefined> {
    return this.#acquire(options, false);
  }

  /** Counts holders and waiters now (one range; nested names under `<name>/queue/` would count too). */
  async usage(): Promise<SemaphoreUsage> {
    const r = await range(this.session.client, this.#queueDir, { prefix: true, countOnly: true });
    const n = Number(r.count);
    return { holders: Math.min(n, this.permits), waiters: Math.max(0, n - this.permits) };
  }

  // -------------------------------------------------------------------------

  async #acquire(options: PermitOptions, wait: boolean): Promise<PermitHandle | undefined> {
    checkOptions(options);
    checkSignal(options.signal);
    const { session } = this;
    const what = `semaphore ${showKey(this.name)}`;
    options.signal?.throwIfAborted();
    session.throwIfExpired();
    // Keys are unique per call: no local turn is needed.
    const turn = await joinLine<LineData>(session, {
      what, log, wait, signals: [options.signal],
      enter: (pending, signal) => this.#enter(pending, signal),
      read: (key, rev) => this.#readLine(key, rev),
    });
    if (!turn) return undefined;
    // We may have been seen as a waiter: wake the ones behind us.
    if (turn.waited && turn.state.data) this.#wakeBehind(turn.state.data);
    log('%s: permit acquired by %s, token %s', what, showKey(turn.key), turn.rev);
    return new Holding(session, turn.key, turn.rev, turn.releaseLocal, what, log);
  }

  /** The two reads every line state comes from: the first `permits + 1` keys, and our key with its predecessor. */
  #lineReads(maxCreateRevision?: bigint): Op[] {
    return [
      op.range(this.#queueDir, { prefix: true, maxCreateRevision, sortTarget: 'Create', sortOrder: 'Ascend', limit: this.permits + 1, keysOnly: true }),
      op.range(this.#queueDir, { prefix: true, maxCreateRevision, sortTarget: 'Create', sortOrder: 'Descend', limit: 2, keysOnly: true }),
    ];
  }

  /**
   * Creates our unique key (create-if-absent, lease attached) in a Txn that
   * also checks the stored permit count and reads our place in line. The
   * first acquire for a name stores the count in the same Txn. A mismatch
   * rejects before anything is written. Retried until the signal aborts; a
   * retry whose earlier attempt did land finds the key with our lease and
   * adopts it.
   */
  async #enter(pending: PendingKey, signal: AbortSignal): Promise<LineState<LineData>> {
    const { client, leaseId } = this.session;
    const count = String(this.permits);
    let createCount = false;
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      const key = uniqueKey(this.#queueDir);
      pending.key = key;
      pending.rev = undefined;
      const countGuard = createCount ? cmp.create(this.#permitsKey, '==', 0n) : cmp.value(this.#permitsKey, '==', count);
      const writes = createCount ? [op.put(this.#permitsKey, count), op.put(key, '', leaseId)] : [op.put(key, '', leaseId)];
      const res: TxnResult = await retrying(() => txn(client,
        [countGuard, cmp.create(key, '==', 0n)],
        [...writes, ...this.#lineReads()],
        [op.range(this.#permitsKey), op.range(key, { keysOnly: true })]), { signals: [signal], maxElapsedMs: Infinity });
      if (res.succeeded) {
        pending.rev = res.revision;
        if (createCount) log('semaphore %s: stored %s permits in %s', showKey(this.name), count, showKey(this.#permitsKey));
        const state = this.#lineState(key, res.revision, res.revision, rangeAt(res, writes.length).kvs, rangeAt(res, writes.length + 1).kvs);
        return state;
      }
      const stored = rangeAt(res, 0).kvs[0];
      const existing = rangeAt(res, 1).kvs[0];
      if (existing && existing.lease === leaseId) {
        // An earlier attempt of this Txn landed but its reply was lost: adopt the key.
        const rev = existing.createRevision;
        pending.rev = rev;
        const state = await retrying(() => this.#readLine(key, rev), { signals: [signal], maxElapsedMs: Infinity });
        return state;
      }
      if (!stored) {
        createCount = true; // first use of this name (or the count key was deleted)
      } else {
        createCount = false;
        const value = stored.value.toString();
        if (value !== count) {
          throw new InvalidArgumentError('permits', `semaphore ${showKey(this.name)} has ${JSON.stringify(value)} permits stored in ` +
            `${showKey(this.#permitsKey)}, this Semaphore was created with ${count}; every user of a name must pass the same count ` +
            '(delete the key while nobody uses the semaphore to change it)');
        }
      }
      if (attempt >= MAX_UNIQUE_ATTEMPTS) throw new Error(`semaphore ${showKey(this.name)}: could not queue after ${attempt} attempts`);
    }
  }

  /** One request: our liveness, our place in line and our blocker, and who is right behind us. */
  async #readLine(key: Buffer, rev: bigint): Promise<LineState<LineData>> {
    const reads = this.#lineReads(rev);
    const behind = Math.min(this.permits - 1, WAKE_AHEAD);
    if (behind > 0) {
      reads.push(op.range(this.#queueDir, { prefix: true, minCreateRevision: rev + 1n, sortTarget: 'Create', sortOrder: 'Ascend', limit: behind, keysOnly: true }));
    }
    const res = await txn(this.session.client, [], reads);
    return this.#lineState(key, rev, res.revision, rangeAt(res, 0).kvs, rangeAt(res, 1).kvs, behind > 0 ? rangeAt(res, 2).kvs : []);
  }

  /**
   * `first`: the oldest `permits + 1` keys created at or before our key;
   * `last`: our key and its predecessor (newest first). Among the first
   * `permits` we hold. Right after them we are the first waiter and must
   * wake on any release, whichever holder it is: we watch deletions under
   * the queue. Further back, only a change of our predecessor can move us
   * up to first waiter (its deletion, or its touch when it became a holder):
   * we watch that one key.
   */
  #lineState(key: Buffer, rev: bigint, revision: bigint, first: KeyValue[], last: KeyValue[], behind: KeyValue[] = []): LineState<LineData> {
    const mine = (kv: KeyValue | undefined) => !!kv && kv.createRevision === rev && kv.key.equals(key);
    const own = last[0];
    if (!own || !mine(own)) return { alive: false, revision };
    const found = first.findIndex(mine);
    const place = found >= 0 ? found : this.permits + 1;
    const data: LineData = { own, place, behind };
    if (place < this.permits) return { alive: true, revision, data };
    const pred = last[1];
    if (place === this.permits || !pred) return { alive: true, revision, data, blocker: { kind: 'prefix-deletes', prefix: this.#queueDir } };
    return { alive: true, revision, data, blocker: { kind: 'key', key: pred.key, createRevision: pred.createRevision, anyEvent: true } };
  }

  /**
   * We hold after waiting, so someone may have seen us as a waiter and be
   * watching our key: re-put it unchanged ("touch": same empty value and
   * lease, guarded by its create revision, so our place and fencing token
   * stay), which wakes the one waiter behind us. If our read showed more
   * free permits behind us, also touch the keys of the waiters that are
   * admitted too, so that their successors wake at the same time instead of
   * one after another. Keys already touched are skipped. In the background:
   * a failed touch only delays a waiter until the touched key is deleted.
   */
  #wakeBehind(data: LineData): void {
    const { own, place, behind } = data;
    const targets = own.modRevision === own.createRevision ? [own] : [];
    // Waiters at places place+1 .. permits-1 are admitted too; the one at `permits` becomes first waiter.
    for (const kv of behind.slice(0, Math.max(0, this.permits - 1 - place))) {
      if (kv.modRevision === kv.createRevision) targets.push(kv);
    }
    if (targets.length === 0) return;
    const { client, signal } = this.session;
    // The key's own lease: a put without it would detach the key from its owner's lease.
    const touch = (kvs: KeyValue[]) => retrying(() => txn(client,
      kvs.map((kv) => cmp.create(kv.key, '==', kv.createRevision)),
      kvs.map((kv) => op.put(kv.key, '', kv.lease))), { signals: [signal], maxElapsedMs: Infinity });
    const failed = (err: unknown) => log('touch failed (the waiter behind wakes when the key is deleted): %s', (err as Error).message);
    // All in one Txn, so that every woken waiter reads them all done; if one of the keys
    // is gone meanwhile (its owner left), touch the others one by one.
    void touch(targets).then((res) => {
      if (res.succeeded || targets.length === 1) return;
      return Promise.all(targets.map((kv) => touch([kv]).catch(failed))).then(() => undefined);
    }).catch(failed);
  }
}
