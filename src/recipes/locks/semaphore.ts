import { InternalError, InvalidArgumentError } from '../../core/errors.js';
import { lockTarget } from '../../core/diagnostics.js';
import { Holding } from '../../core/holding.js';
import { childPrefix, showKey } from '../../core/keys.js';
import {
  cmp,
  op,
  range,
  rangeAt,
  txn,
  type Compare,
  type KeyValue,
  type Op,
  type RangeOptions,
} from '../../core/kv.js';
import { createUniqueKey, joinLine, MAX_UNIQUE_ATTEMPTS, type PendingKey } from '../../core/line.js';
import { logger } from '../../core/log.js';
import { retrying } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkInteger, checkName, checkOptions, checkSignal } from '../../core/validate.js';
import type { LineState } from '../../core/wait.js';

import {
  groupByRevision,
  type LineData,
  MAX_PERMITS,
  MAX_PERMITS_PER_ACQUIRE,
  type PermitHandle,
  type PermitOptions,
  type Request,
  type SemaphoreUsage,
  TOUCH_BATCH,
  WAKE_AHEAD,
} from './semaphore-layout.js';

export { MAX_PERMITS, MAX_PERMITS_PER_ACQUIRE };
export type { PermitHandle, PermitOptions, SemaphoreUsage };

const log = logger('semaphore');

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
 *
 * `acquire({ permits: n })` takes n permits at once: it writes n keys
 * `<name>/queue/<19-digit ns>-<3-digit i>` in one Txn, so they share one
 * create revision and stand together in line; the request holds once the
 * keys ahead of it plus its own n fit in `permits`. Counting keys, a
 * single-permit caller of an older version sees such a request as n
 * permits, so both can share a name.
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
   * Blocks until `options.permits` permits (default 1) are held, all at
   * once, and returns a handle for them (its key, fencing token, signal and
   * release). FIFO among waiters: a request waits until everything ahead
   * of it was served and its permits fit. Use with `await using`.
   * @throws InvalidArgumentError if `<name>/permits` holds another count, or for a bad
   *   `options.permits` (nothing is written)
   * @throws SessionExpiredError if the session's lease is lost while waiting
   */
  acquire(options: PermitOptions = {}): Promise<PermitHandle> {
    return this.#acquire(options, true) as Promise<PermitHandle>;
  }

  /**
   * Takes `options.permits` permits (default 1) if they are free right now
   * and nobody waits; never waits.
   * @returns the handle, or undefined (leaving no key behind)
   * @throws InvalidArgumentError if `<name>/permits` holds another count
   */
  tryAcquire(options: PermitOptions = {}): Promise<PermitHandle | undefined> {
    return this.#acquire(options, false);
  }

  /**
   * Permits held and permits asked for by waiters, now (one range; nested
   * names under `<name>/queue/` would count too).
   */
  async usage(): Promise<SemaphoreUsage> {
    const r = await range(this.session.client, this.#queueDir, this.#queue('Ascend', this.permits + 1));
    // Requests hold in order while they fit; the first one that does not fit (or is cut by the limit) waits.
    let holders = 0;
    for (const g of groupByRevision(r.kvs.slice(0, this.permits))) {
      const complete =
        holders + g.length < r.kvs.length && r.kvs[holders + g.length]!.createRevision !== g[0]!.createRevision;
      if (holders + g.length > this.permits || (!complete && holders + g.length < Number(r.count))) break;
      holders += g.length;
    }
    return { holders, waiters: Number(r.count) - holders };
  }

  // -------------------------------------------------------------------------

  async #acquire(options: PermitOptions, wait: boolean): Promise<PermitHandle | undefined> {
    checkOptions(options);
    checkSignal(options.signal);
    const n = options.permits ?? 1;
    checkInteger(n, 'options.permits', 1, Math.min(this.permits, MAX_PERMITS_PER_ACQUIRE));
    const { session } = this;
    const what = `semaphore ${showKey(this.name)}`;
    options.signal?.throwIfAborted();
    session.throwIfExpired();
    let request: Request | undefined;
    const lock = lockTarget('semaphore', this.name, session, n);
    // Keys are unique per call: no local turn is needed.
    const turn = await joinLine<LineData>(session, {
      what,
      log,
      wait,
      lock,
      signals: [options.signal],
      enter: async (pending, signal) => {
        const entered = await this.#enter(n, pending, signal);
        request = entered.request;
        return entered.state;
      },
      read: (_key, rev) => this.#readLine(request!, rev),
    });
    if (!turn) return undefined;
    // We may have been seen as a waiter: wake the ones behind us.
    if (turn.waited && turn.state.data) this.#wakeBehind(n, turn.state.data);
    log('%s: %d permit(s) acquired by %s, token %s', what, n, showKey(turn.key), turn.rev);
    return new Holding(session, turn.key, turn.rev, turn.releaseLocal, what, { log, group: request!.group, lock });
  }

  /** A request of `n` keys for the fresh name `base` (n > 1 adds `-<i>` suffixes under it). */
  #request(n: number, base: Buffer): Request {
    if (n === 1) return { n, keys: [base], group: undefined };
    const group = Buffer.concat([base, Buffer.from('-')]);
    return {
      n,
      group,
      keys: Array.from({ length: n }, (_, i) => Buffer.concat([group, Buffer.from(String(i).padStart(3, '0'))])),
    };
  }

  /** Keys-only range options over the queue, by create revision. */
  #queue(sortOrder: 'Ascend' | 'Descend', limit: number, bounds: Partial<RangeOptions> = {}): RangeOptions {
    return { prefix: true, ...bounds, sortTarget: 'Create', sortOrder, limit, keysOnly: true };
  }

  /**
   * The two reads every line state comes from: the first `permits + 1`
   * keys, and our `n` keys with our predecessor's (the newest key older than ours).
   */
  #lineReads(n: number, maxCreateRevision?: bigint): Op[] {
    return [
      op.range(this.#queueDir, this.#queue('Ascend', this.permits + 1, { maxCreateRevision })),
      op.range(this.#queueDir, this.#queue('Descend', n + 1, { maxCreateRevision })),
    ];
  }

  /**
   * Creates our unique key(s) through core's one unique-key writer, in a Txn
   * that also checks the stored permit count and reads our place in line.
   * The first acquire for a name stores the count in the same Txn. A
   * mismatch rejects before anything is written. A retry whose earlier
   * attempt did land adopts the request (its keys were written together).
   */
  async #enter(
    n: number,
    pending: PendingKey,
    signal: AbortSignal,
  ): Promise<{ request: Request; state: LineState<LineData> }> {
    const count = String(this.permits);
    let createCount = false;
    for (let attempt = 1; ; attempt++) {
      let request!: Request;
      const store: Op[] = createCount ? [op.put(this.#permitsKey, count)] : [];
      const compares: Compare[] = [
        createCount ? cmp.create(this.#permitsKey, '==', 0n) : cmp.value(this.#permitsKey, '==', count),
      ];
      const created = await createUniqueKey(
        this.session,
        this.#queueDir,
        [...store, ...this.#lineReads(n)],
        pending,
        signal,
        {
          compares,
          failureReads: [op.range(this.#permitsKey)],
          entry: (name) => (request = this.#request(n, name)),
        },
      );
      if ('rev' in created) {
        const { rev, reads } = created;
        if (createCount)
          log('semaphore %s: stored %s permits in %s', showKey(this.name), count, showKey(this.#permitsKey));
        // An earlier attempt of this Txn landed but its reply was lost: re-read the line.
        const state = reads
          ? this.#lineState(request, rev, rev, rangeAt(reads, store.length).kvs, rangeAt(reads, store.length + 1).kvs)
          : await retrying(() => this.#readLine(request, rev), { signals: [signal], maxElapsedMs: Infinity });
        return { request, state };
      }
      const stored = rangeAt(created.failure, 0).kvs[0];
      createCount = !stored; // first use of this name (or the count key was deleted)
      const value = stored?.value.toString();
      if (stored && value !== count) {
        throw new InvalidArgumentError(
          'permits',
          `semaphore ${showKey(this.name)} has ${JSON.stringify(value)} permits stored in ` +
            `${showKey(this.#permitsKey)}, this Semaphore was created with ${count}; ` +
            'every user of a name must pass the same count ' +
            '(delete the key while nobody uses the semaphore to change it)',
        );
      }
      if (attempt >= MAX_UNIQUE_ATTEMPTS)
        throw new InternalError(`semaphore ${showKey(this.name)}: could not queue after ${attempt} attempts`);
    }
  }

  /** One request: our liveness, our place in line and our blocker, and who is right behind us. */
  async #readLine(request: Request, rev: bigint): Promise<LineState<LineData>> {
    const reads = this.#lineReads(request.n, rev);
    const behind = Math.min(this.permits - 1, WAKE_AHEAD);
    if (behind > 0)
      reads.push(op.range(this.#queueDir, this.#queue('Ascend', behind, { minCreateRevision: rev + 1n })));
    const res = await txn(this.session.client, [], reads);
    const after = behind > 0 ? rangeAt(res, 2).kvs : [];
    return this.#lineState(
      request,
      rev,
      res.revision,
      rangeAt(res, 0).kvs,
      rangeAt(res, 1).kvs,
      after,
      after.length === behind,
    );
  }

  /**
   * `first`: the oldest `permits + 1` keys created at or before our keys;
   * `last`: our keys and the newest key older than them (newest first). The
   * keys of one request share a create revision, so they stand together and
   * `place` (how many keys are older than ours) decides: we hold while
   * `place + n <= permits`. If we do not hold but everything ahead of us
   * does (`place <= permits`), we are the first waiter and must wake on any
   * release, whichever holder it is: we watch deletions under the queue.
   * Further back, only a change of our predecessor can move us up to first
   * waiter (its deletion, or its touch when it became a holder): we watch
   * one of its keys (it touches them all).
   */
  #lineState(
    request: Request,
    rev: bigint,
    revision: bigint,
    first: KeyValue[],
    last: KeyValue[],
    behind: KeyValue[] = [],
    behindCut = false,
  ): LineState<LineData> {
    const own = last.filter((kv) => kv.createRevision === rev);
    const key = request.keys[0]!;
    if (own.length !== request.n || !own.some((kv) => kv.key.equals(key))) return { alive: false, revision };
    const place = first.filter((kv) => kv.createRevision < rev).length;
    const data: LineData = { own, place, behind, behindCut };
    if (place + request.n <= this.permits) return { alive: true, revision, data };
    const pred = last.find((kv) => kv.createRevision < rev);
    if (place <= this.permits || !pred)
      return { alive: true, revision, data, blocker: { kind: 'prefix-deletes', prefix: this.#queueDir } };
    return {
      alive: true,
      revision,
      data,
      blocker: { kind: 'key', key: pred.key, createRevision: pred.createRevision, anyEvent: true },
    };
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
  #wakeBehind(n: number, data: LineData): void {
    const { own, place, behind, behindCut } = data;
    const untouched = (kvs: KeyValue[]) => kvs.every((kv) => kv.modRevision === kv.createRevision);
    const groups: KeyValue[][] = untouched(own) ? [own] : [];
    // Requests right behind us that fit in the permits left are admitted too (in order, each as a
    // whole); the first that does not fit becomes the first waiter. The last request read may be
    // cut short by the read's limit: its size is unknown, so it is left alone.
    let pos = place + n;
    const behindGroups = groupByRevision(behind);
    if (behindCut) behindGroups.pop();
    for (const g of behindGroups) {
      if (pos + g.length > this.permits) break;
      pos += g.length;
      if (untouched(g)) groups.push(g);
    }
    if (groups.length === 0) return;
    const { client, signal } = this.session;
    // The key's own lease: a put without it would detach the key from its owner's lease.
    const touch = (kvs: KeyValue[]) =>
      retrying(
        () =>
          txn(
            client,
            kvs.map((kv) => cmp.create(kv.key, '==', kv.createRevision)),
            kvs.map((kv) => op.put(kv.key, '', kv.lease)),
          ),
        { signals: [signal], maxElapsedMs: Infinity },
      );
    const failed = (err: unknown) =>
      log('touch failed (the waiter behind wakes when the key is deleted): %s', (err as Error).message);
    // All in one Txn when it fits etcd's op limit, so that every woken waiter reads them all
    // done; otherwise, or if one of the requests is gone meanwhile (its owner left), request by request.
    const all = groups.flat();
    const oneByOne = () => Promise.all(groups.map((g) => touch(g).catch(failed))).then(() => undefined);
    if (groups.length === 1 || all.length > TOUCH_BATCH) {
      void oneByOne();
      return;
    }
    void touch(all)
      .then((res) => (res.succeeded ? undefined : oneByOne()))
      .catch(failed);
  }
}
