import type { WaitOptions } from '../../core/options.js';
import { nameOf, publish, traced } from '../../core/diagnostics.js';
import type { ComparatorBuilder, Namespace } from 'etcd3';
import type { Logger } from '../../core/log.js';
import { linkSignals, type LinkedSignal } from '../../core/abort.js';
import { InvalidArgumentError, LockNotHeldError } from '../../core/errors.js';
import { checkGuard, markGuard, resolveGuard, type GuardedWriteOptions } from '../../core/guard.js';
import { childPrefix, showKey, toBuffer, uniqueSuffix } from '../../core/keys.js';
import { cmp, op, range, rangeAt, txn, type Op, type OpResult } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { watchHeldKey } from '../../core/own-key.js';
import { type ProvenOutcome, ReceiptBook } from '../../core/receipts.js';
import { retrying } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkClient, checkInteger, checkName, checkOptions, checkSignal, checkValue } from '../../core/validate.js';
import type { WatchEvent, WatchSpec } from '../../core/watch-hub.js';
import {
  ConsumerLine,
  createItem,
  GivenSession,
  WINDOW,
  type Candidate,
  type ClaimContext,
  type ClaimOutcome,
  type ClaimSource,
  type SourceScan,
} from '../../core/queue-line.js';

const log = logger('work-queue');

/** The priority of a job added without one. Lower numbers are claimed first (0–65535). */
export const DEFAULT_JOB_PRIORITY = 100;

/** Options of the {@link WorkQueue} constructor. */
export interface WorkQueueOptions {
  /**
   * Dead-letter a job once it has been claimed this many times without an
   * ack (its claimers died, lost their session, or released it): the claim
   * that would be attempt `maxAttempts + 1` moves it to `<prefix>/dead/<id>`
   * instead of handing it out. Default: never.
   */
  maxAttempts?: number;
}

export type { GuardedWriteOptions } from '../../core/guard.js';

/** Options of {@link WorkQueue.add}. */
export interface AddJobOptions extends GuardedWriteOptions {
  /** 0 (claimed first) to 65535; default {@link DEFAULT_JOB_PRIORITY}. */
  priority?: number;
}

/** Options of {@link WorkQueue.claim}. */
export type ClaimOptions = WaitOptions;

/** A claimed job, from {@link WorkQueue.claim}. Ack it when done; dispose it (or release it) to give it back. */
export interface Job extends AsyncDisposable {
  /** The job's ID, `<%05d priority>-<19 digits>`, unique in the queue. */
  readonly id: string;
  /** The job's priority (lower first). */
  readonly priority: number;
  /** The job's value as a UTF-8 string. */
  readonly value: string;
  /** The job's value as bytes. */
  readonly buffer: Buffer;
  /** How many times the job has been claimed, this claim included (1 the first time). */
  readonly attempts: number;
  /** The claim key's create revision: larger for every later claim of any job. Fence side effects with it. */
  readonly fencingToken: bigint;
  /** The claim key, `<prefix>/claims/<id>`. */
  readonly key: string;
  /** Aborted when the claim may be lost (the session's lease) or ends (ack, release, dead-letter). */
  readonly signal: AbortSignal;
  /** True once acked, released, dead-lettered or lost. */
  readonly done: boolean;
  /** An etcd3 Txn builder with `CreateRevision(claim key) == fencingToken` already added. */
  ifOwner(): ComparatorBuilder;
  /**
   * Completes the job: deletes it, its claim and its attempt counter in one
   * Txn guarded by this claim (its key's create revision, the fencing
   * token) and by `options.guard`. It resolves only if that Txn landed, as
   * etcd's state proves (a receipt), also after a lost reply and an outage
   * of any length.
   * @throws LockNotHeldError if the claim was lost first (session expired, released, deleted): nothing
   *   was written, and the job may run (or have run) elsewhere
   * @throws NotLeaderError / LockNotHeldError if `options.guard` does not hold (nothing written; the claim is kept)
   * @throws OutcomeUnknownError if `options.signal` aborted while etcd was unreachable mid-write
   */
  ack(options?: GuardedWriteOptions): Promise<void>;
  /** Gives the job back (deletes the claim); it is claimable again at once. Idempotent; a no-op after ack. */
  release(): Promise<void>;
  /**
   * Moves the job to `<prefix>/dead/<id>` (a poison job), guarded like {@link ack}.
   * @throws LockNotHeldError if the claim was lost
   */
  deadLetter(options?: GuardedWriteOptions): Promise<void>;
}

/** Counts from {@link WorkQueue.stats}. */
export interface WorkQueueStats {
  /** Jobs not yet acked, claimed or not. */
  jobs: number;
  /** Jobs claimed right now. */
  claimed: number;
  /** Dead-lettered jobs. */
  dead: number;
  /** Claimers waiting for a job. */
  waiting: number;
}

/** A dead-lettered job, from {@link WorkQueue.deadLetters}. */
export interface DeadJob {
  /** The job's ID, as `Job.id` had it. */
  id: string;
  /** The job's value (UTF-8). */
  value: string;
  /** The job's value, as bytes. */
  buffer: Buffer;
}

interface Claimed {
  id: string;
  value: Buffer;
  attempts: number;
  token: bigint;
}

const ID = /^[0-9]{5}-[0-9]+$/;

/** The keys of one work queue. */
class Layout {
  readonly root: Buffer;
  readonly jobs: Buffer;
  readonly claims: Buffer;
  readonly attempts: Buffer;
  readonly waiters: Buffer;
  readonly dead: Buffer;
  readonly receipts: Buffer;

  constructor(prefix: string | Buffer) {
    this.root = childPrefix(prefix);
    const sub = (s: string) => Buffer.concat([this.root, Buffer.from(s)]);
    this.jobs = sub('jobs/');
    this.claims = sub('claims/');
    this.attempts = sub('attempts/');
    this.waiters = sub('waiters/');
    this.dead = sub('dead/');
    this.receipts = sub('receipts/');
  }

  job(id: string): Buffer {
    return Buffer.concat([this.jobs, Buffer.from(id)]);
  }
  claim(id: string): Buffer {
    return Buffer.concat([this.claims, Buffer.from(id)]);
  }
  attempt(id: string): Buffer {
    return Buffer.concat([this.attempts, Buffer.from(id)]);
  }
  deadKey(id: string): Buffer {
    return Buffer.concat([this.dead, Buffer.from(id)]);
  }

  /** The ID in a key under `under`, or undefined. */
  idIn(under: Buffer, key: Buffer): string | undefined {
    if (key.length <= under.length || !key.subarray(0, under.length).equals(under)) return undefined;
    return key.subarray(under.length).toString();
  }
}

/**
 * @internal Jobs that a claimer takes by creating a claim key next to them:
 * a job is claimable while no claim key exists for it. Candidates are the
 * unclaimed jobs in key order (priority, then age).
 */
class JobSource implements ClaimSource<Claimed> {
  readonly client: Namespace;
  readonly what: string;
  readonly log: Logger = log;
  readonly waitersPrefix: Buffer;
  readonly headWatch: WatchSpec;
  readonly #k: Layout;
  readonly #book: ReceiptBook;
  /** Jobs read per scan: enough to see past every claimed job at the front. */
  #window = WINDOW;

  constructor(client: Namespace, k: Layout, book: ReceiptBook, what: string) {
    this.client = client;
    this.#k = k;
    this.#book = book;
    this.what = what;
    this.waitersPrefix = k.waiters;
    this.headWatch = { key: k.root, prefix: true };
  }

  scanOps(): Op[] {
    return [
      op.range(this.#k.claims, { prefix: true, keysOnly: true }),
      op.range(this.#k.jobs, {
        prefix: true,
        sortTarget: 'Key',
        sortOrder: 'Ascend',
        limit: this.#window,
        keysOnly: true,
      }),
    ];
  }

  parseScan(results: OpResult[]): SourceScan {
    const [claims, jobs] = results;
    if (claims?.type !== 'range' || jobs?.type !== 'range') throw new Error('internal: scan responses are not ranges');
    const claimed = new Set(claims.kvs.map((kv) => this.#k.idIn(this.#k.claims, kv.key)));
    const cands = jobs.kvs
      .filter((kv) => !claimed.has(this.#k.idIn(this.#k.jobs, kv.key)))
      .map((kv) => ({ key: kv.key, rev: kv.createRevision }));
    const wanted = claimed.size + WINDOW;
    const incomplete = !cands.length && jobs.more;
    if (incomplete) this.#window = Math.max(wanted, this.#window * 2);
    else if (wanted > this.#window || this.#window > 4 * wanted) this.#window = wanted;
    return { cands, incomplete };
  }

  fromEvents(events: WatchEvent[]): Candidate[] | undefined {
    const k = this.#k;
    const ackedIds = new Set<string>();
    for (const e of events)
      if (e.type === 'delete') {
        const id = k.idIn(k.jobs, e.kv.key);
        if (id) ackedIds.add(id);
      }
    const cands: Candidate[] = [];
    let released = false;
    for (const e of events) {
      if (e.type === 'put' && e.kv.version === 1n && k.idIn(k.jobs, e.kv.key))
        cands.push({ key: e.kv.key, rev: e.kv.createRevision });
      if (e.type === 'delete') {
        const id = k.idIn(k.claims, e.kv.key);
        // A claim deleted without its job: released, or its claimer's lease expired.
        if (id && !ackedIds.has(id)) released = true;
      }
    }
    return released ? undefined : cands;
  }

  interchangeable(cands: Candidate[]): number {
    const prio = (c: Candidate) => this.#k.idIn(this.#k.jobs, c.key)?.slice(0, 5);
    const head = cands[0] && prio(cands[0]);
    let n = 0;
    while (n < cands.length && prio(cands[n]!) === head) n++;
    return n;
  }

  /**
   * Creates the claim key on the claimer's lease, with the attempt's ID as
   * its value: that key, with our lease and our ID, is the proof that a
   * claim whose reply was lost landed (the job itself is still there to
   * read: only an ack removes it). Retried until the outcome is known or
   * the session is lost (the claim then went with its lease). The same Txn
   * deletes receipts our acks spent, saving them a round trip of their own.
   */
  async claim(c: Candidate, ctx: ClaimContext): Promise<ClaimOutcome<Claimed>> {
    const spent = this.#book.takeSpent();
    const cleanup = spent.map((key) => op.delete(key));
    try {
      return await retrying(() => this.#claimOnce(c, ctx, cleanup), {
        signals: [ctx.session.signal],
        maxElapsedMs: Infinity,
        onRetry: (err) =>
          log('%s: claim of %s failed, retrying: %s', this.what, showKey(c.key), (err as Error).message),
      });
    } catch (err) {
      for (const key of spent) this.#book.spend(key);
      // Best effort: undo an attempt that may have landed (if the session is gone, its lease took the claim).
      const claimKey = this.#k.claim(this.#k.idIn(this.#k.jobs, c.key)!);
      await txn(this.client, [cmp.value(claimKey, '==', ctx.attemptId)], [op.delete(claimKey)]).catch(() => undefined);
      throw ctx.session.leaseError(err, this.what);
    }
  }

  async #claimOnce(c: Candidate, ctx: ClaimContext, cleanup: Op[]): Promise<ClaimOutcome<Claimed>> {
    const k = this.#k;
    const id = k.idIn(k.jobs, c.key)!;
    const claimKey = k.claim(id);
    const attemptsKey = k.attempt(id);
    const waiterOps = ctx.waiter ? [op.delete(ctx.waiter.key)] : [];
    const res = await txn(
      this.client,
      [cmp.create(claimKey, '==', 0n), cmp.create(c.key, '==', c.rev)],
      [
        op.put(claimKey, ctx.attemptId, ctx.session.leaseId),
        op.put(attemptsKey, ctx.session.leaseHex),
        op.range(c.key),
        op.range(attemptsKey, { keysOnly: true }),
        ...waiterOps,
        ...cleanup,
      ],
      [op.range(claimKey), op.range(c.key), op.range(attemptsKey, { keysOnly: true }), ...ctx.scan, ...cleanup],
    );
    if (res.succeeded) {
      const job = rangeAt(res, 2).kvs[0]!;
      const attempts = Number(rangeAt(res, 3).kvs[0]?.version ?? 1n);
      return { won: true, result: { id, value: job.value, attempts, token: res.revision } };
    }
    const claim = rangeAt(res, 0).kvs[0];
    const job = rangeAt(res, 1).kvs[0];
    if (claim && claim.value.toString() === ctx.attemptId && claim.lease === ctx.session.leaseId && job) {
      // An earlier try of this very claim committed and its reply was lost.
      log('%s: claim of %s committed on an earlier try', this.what, id);
      const attempts = Number(rangeAt(res, 2).kvs[0]?.version ?? 1n);
      return { won: true, result: { id, value: job.value, attempts, token: claim.createRevision } };
    }
    return { won: false, scan: res.responses.slice(3, 3 + ctx.scan.length) };
  }
}

/**
 * A crash-safe work queue for job schedulers (Go's recipes and etcd3 have
 * none): at-least-once delivery with acknowledgements.
 *
 * A job is a key `<prefix>/jobs/<id>` (no lease). Claiming it creates
 * `<prefix>/claims/<id>`, attached to the claimer's session lease, in a Txn
 * that only succeeds while no claim exists. If the worker dies, its lease
 * expires, the claim vanishes and the job is claimable again: nothing is
 * lost, and a job runs twice only if a claimer died (or lost its session)
 * before acking it. `ack()` deletes the job and its claim in one Txn guarded
 * by the claim's create revision, so a worker that lost its claim cannot
 * ack, and it proves a landing whose reply was lost by a receipt.
 *
 * Producers need no session: `new WorkQueue(client, prefix)` can add jobs,
 * read stats and dead letters, and retry dead jobs; only `claim()` needs a
 * Session.
 *
 * Claimers wait herd-free (one line, one watcher of the jobs), and jobs are
 * claimed in order of priority (lower first), then age.
 */
export class WorkQueue implements AsyncDisposable {
  /** The session whose lease holds this object's claims and waiter keys; undefined for a producer built from a client. */
  readonly session: Session | undefined;
  /** The etcd3 client (or namespace) every call goes through: the session's, or the one given. */
  readonly client: Namespace;
  /** The queue's name; keys live under `<prefix>/`. */
  readonly prefix: string | Buffer;
  readonly #k: Layout;
  readonly #line: ConsumerLine<Claimed> | undefined;
  readonly #book: ReceiptBook;
  readonly #maxAttempts: number | undefined;
  readonly #what: string;

  /**
   * @param session - the session whose lease holds claims (when it is lost, its claims are released); or
   *   a plain etcd3 client for a producer, which can do everything but `claim()`
   * @param prefix - the queue's name; keys live under `<prefix>/`
   * @param options - dead-letter settings
   * @throws InvalidArgumentError for neither a Session nor a client, an empty prefix or bad options
   */
  constructor(session: Session | Namespace, prefix: string | Buffer, options: WorkQueueOptions = {}) {
    const given = session as Partial<Session> | null;
    const isSession = typeof given === 'object' && given !== null && typeof given.leaseId === 'string';
    if (isSession) checkSession(session);
    else checkClient(session, 'session');
    checkName(prefix, 'prefix');
    checkOptions(options);
    if (options.maxAttempts !== undefined) checkInteger(options.maxAttempts, 'options.maxAttempts', 1);
    this.session = isSession ? (session as Session) : undefined;
    this.client = this.session ? this.session.client : (session as Namespace);
    this.prefix = prefix;
    this.#k = new Layout(prefix);
    this.#maxAttempts = options.maxAttempts;
    this.#what = `work queue ${showKey(prefix)}`;
    this.#book = new ReceiptBook(this.client, this.#k.receipts);
    this.#line = this.session
      ? new ConsumerLine(new JobSource(this.client, this.#k, this.#book, this.#what), new GivenSession(this.session))
      : undefined;
  }

  /** A call on a closed or lost session rejects (SESSION_EXPIRED), producers' calls included. */
  #checkLive(): void {
    this.session?.throwIfExpired();
  }

  /**
   * Adds a job: `<prefix>/jobs/<%05d priority>-<19-digit nanoseconds>`, no
   * lease, created if absent (a collision retries with a new name). The
   * same Txn writes a receipt under `<prefix>/receipts/`, so a retry after
   * a lost reply never adds the job twice.
   * @param options - `priority`, `guard` (fencing, e.g. `election.ifLeader()`) and `signal`
   * @returns the job's ID
   * @throws InvalidArgumentError for a non-string/Buffer value, a priority outside 0–65535 or a bad guard
   * @throws NotLeaderError / LockNotHeldError if the guard does not hold (nothing written)
   * @throws SessionExpiredError if this object's session is closed or lost
   * @throws OutcomeUnknownError if the signal aborted while etcd was unreachable mid-write
   */
  async add(value: string | Buffer, options: AddJobOptions = {}): Promise<string> {
    checkValue(value, 'value');
    checkWriteOptions(options);
    const priority = options.priority ?? DEFAULT_JOB_PRIORITY;
    checkInteger(priority, 'options.priority', 0, 65535);
    this.#checkLive();
    return traced(
      'enqueue',
      () => ({ recipe: 'work-queue' as const, name: nameOf(this.prefix), priority }),
      async () => {
        const guard = await resolveGuard(this.client, options.guard);
        const pfx = `${priority.toString().padStart(5, '0')}-`;
        const key = await createItem(
          this.#book,
          () => this.#k.job(pfx + uniqueSuffix()),
          toBuffer(value),
          guard,
          `${this.#what}: add`,
          options.signal,
        );
        return this.#k.idIn(this.#k.jobs, key)!;
      },
      (id) => ({ key: this.#k.job(id).toString(), id }),
    );
  }

  /**
   * Claims the next job (lowest priority number, then oldest), waiting
   * while none is claimable. The claim lives on this object's session.
   * @throws SessionExpiredError if the session's lease is lost (or was closed)
   * @throws InvalidArgumentError if this object was built from a plain client (no session to hold a claim)
   */
  async claim(options: ClaimOptions = {}): Promise<Job> {
    checkOptions(options);
    checkSignal(options.signal);
    const line = this.#line;
    if (!line || !this.session) {
      throw new InvalidArgumentError(
        'session',
        `${this.#what}: claim() needs a WorkQueue built with a Session ` +
          '(new WorkQueue(session, prefix)); this one was built from a plain client, for producers',
      );
    }
    const session = this.session;
    const name = nameOf(this.prefix);
    return traced(
      'claim',
      () => ({ name, leaseId: session.leaseId }),
      async () => {
        for (;;) {
          const c = await line.take(options.signal);
          const job = new ClaimedJob(session, this.#k, c, this.#what, this.#book, name);
          if (this.#maxAttempts === undefined || c.attempts <= this.#maxAttempts) {
            log('%s: claimed %s (attempt %d, token %s)', this.#what, c.id, c.attempts, c.token);
            if (c.attempts >= 2) publish('workQueueRetry', () => job.message());
            return job;
          }
          log('%s: %s claimed %d times without an ack: dead-lettering it', this.#what, c.id, c.attempts - 1);
          await job
            .deadLetter({}, 'max-attempts')
            .catch((err: unknown) => log('%s: dead-letter of %s failed: %s', this.#what, c.id, (err as Error).message));
        }
      },
      (job, _, waitMs) => ({ ...(job as ClaimedJob).message(), waitMs }),
    );
  }

  /**
   * Counts of jobs, claims, dead letters and waiting claimers, read at one revision.
   * @throws SessionExpiredError if this object's session is closed or lost
   */
  async stats(): Promise<WorkQueueStats> {
    this.#checkLive();
    const k = this.#k;
    const count = (p: Buffer) => op.range(p, { prefix: true, countOnly: true });
    const res = await retrying(() =>
      txn(this.client, [], [count(k.jobs), count(k.claims), count(k.dead), count(k.waiters)]),
    );
    const n = (i: number) => Number(rangeAt(res, i).count);
    return { jobs: n(0), claimed: n(1), dead: n(2), waiting: n(3) };
  }

  /**
   * Dead-lettered jobs, oldest ID first (at most `limit`, default 1000).
   * @throws SessionExpiredError if this object's session is closed or lost
   */
  async deadLetters(limit = 1000): Promise<DeadJob[]> {
    checkInteger(limit, 'limit', 1);
    this.#checkLive();
    const r = await retrying(() =>
      range(this.client, this.#k.dead, { prefix: true, sortTarget: 'Key', sortOrder: 'Ascend', limit }),
    );
    return r.kvs.map((kv) => ({
      id: this.#k.idIn(this.#k.dead, kv.key)!,
      value: kv.value.toString(),
      buffer: kv.value,
    }));
  }

  /**
   * Puts a dead-lettered job back in the queue (same ID, attempts reset), as
   * a proven write: the result is right also after a lost reply.
   * @param options - `guard` (fencing) and `signal`
   * @returns true if this call put it back; false if there is no such dead job, or a job with that ID is queued
   * @throws InvalidArgumentError for a malformed ID or a bad guard
   * @throws NotLeaderError / LockNotHeldError if the guard does not hold (nothing written)
   * @throws SessionExpiredError if this object's session is closed or lost
   * @throws OutcomeUnknownError if the signal aborted while etcd was unreachable mid-write
   */
  async retryDead(id: string, options: GuardedWriteOptions = {}): Promise<boolean> {
    if (typeof id !== 'string' || !ID.test(id))
      throw new InvalidArgumentError(
        'id',
        `must be a job ID like "00100-1732212345678901234", got ${typeof id === 'string' ? JSON.stringify(id) : typeof id}`,
      );
    checkWriteOptions(options);
    this.#checkLive();
    const { signal } = options;
    const guard = await resolveGuard(this.client, options.guard);
    const k = this.#k;
    const what = `${this.#what}: retry of dead job ${id}`;
    // Each round ends unless the job is dead-lettered again between our read and our write; bounded all the same.
    for (let round = 0; round < 100; round++) {
      const dead = await retrying(() => range(this.client, k.deadKey(id)), { signals: [signal] });
      const kv = dead.kvs[0];
      if (!kv) return false;
      const out = await this.#book.write(
        {
          compares: [cmp.mod(k.deadKey(id), '==', kv.modRevision), cmp.create(k.job(id), '==', 0n), ...guard.compares],
          success: [op.put(k.job(id), kv.value), op.delete(k.deadKey(id)), op.delete(k.attempt(id))],
          failure: [
            op.range(k.deadKey(id), { keysOnly: true }),
            op.range(k.job(id), { keysOnly: true }),
            ...guard.reads,
          ],
        },
        { signal, what },
      );
      if (out.landed) return true;
      const [deadNow, jobNow, ...reads] = out.failure;
      if (!guard.holds(reads)) throw guard.error(what);
      if (jobNow?.type === 'range' && jobNow.kvs.length) return false;
      if (deadNow?.type !== 'range' || !deadNow.kvs.length) return false;
    }
    throw new Error(`${what}: the dead job kept changing`);
  }

  /**
   * Deletes the receipts this object's writes spent (they are otherwise
   * deleted by its next write, or a moment later). The session, if any, is
   * the caller's and stays open; claimed jobs are untouched.
   */
  async close(): Promise<void> {
    await this.#book
      .flush()
      .catch((err: unknown) => log('%s: receipt cleanup failed: %s', this.#what, (err as Error).message));
  }

  /** `await using wq = new WorkQueue(...)` cleans up at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function checkWriteOptions(options: GuardedWriteOptions): void {
  checkOptions(options);
  checkGuard(options.guard);
  checkSignal(options.signal);
}

/** A claimed job. */
class ClaimedJob implements Job {
  readonly id: string;
  readonly priority: number;
  readonly buffer: Buffer;
  readonly attempts: number;
  readonly fencingToken: bigint;
  readonly #session: Session;
  readonly #k: Layout;
  readonly #book: ReceiptBook;
  readonly #what: string;
  readonly #linked: LinkedSignal;
  #ending: Promise<void> | undefined;
  #outcome: 'acked' | 'released' | 'dead' | undefined;
  #stopWatch: (() => void) | undefined;

  readonly #name: string;

  constructor(session: Session, k: Layout, c: Claimed, what: string, book: ReceiptBook, name: string) {
    this.#name = name;
    this.#session = session;
    this.#k = k;
    this.#book = book;
    this.id = c.id;
    this.priority = Number(c.id.slice(0, 5));
    this.buffer = c.value;
    this.attempts = c.attempts;
    this.fencingToken = c.token;
    this.#what = `${what} job ${c.id}`;
    this.#linked = linkSignals(session.signal);
  }

  get value(): string {
    return this.buffer.toString();
  }

  get key(): string {
    return this.#k.claim(this.id).toString();
  }

  get signal(): AbortSignal {
    // Someone else may delete our claim (an operator, a revoked lease): the job is then lost too.
    // Watched from the first look at the signal until the job ends.
    if (!this.#stopWatch && !this.#ending && !this.#linked.signal.aborted) {
      const stop = watchHeldKey(this.#session, this.#k.claim(this.id), this.fencingToken, this.#what, (reason) =>
        this.#linked.abort(reason),
      );
      this.#stopWatch = stop;
      this.#linked.signal.addEventListener('abort', stop, { once: true });
    }
    return this.#linked.signal;
  }

  get done(): boolean {
    return this.#linked.signal.aborted;
  }

  ifOwner(): ComparatorBuilder {
    if (this.done) throw new LockNotHeldError(`${this.#what} is not held (${this.#outcome ?? 'claim lost'})`);
    return markGuard(
      this.#session.client.if(this.#k.claim(this.id), 'Create', '==', this.fencingToken.toString()),
      'LOCK_NOT_HELD',
      this.#what,
    );
  }

  /** @internal This job as diagnostics messages show it. */
  message(): { name: string; id: string; key: string; fencingToken: bigint; attempts: number } {
    return { name: this.#name, id: this.id, key: this.key, fencingToken: this.fencingToken, attempts: this.attempts };
  }

  ack(options: GuardedWriteOptions = {}): Promise<void> {
    return traced(
      'ack',
      () => this.message(),
      () => this.#finish('acked', [], 'ack', options),
      () => ({}),
    );
  }

  async deadLetter(options: GuardedWriteOptions = {}, reason: 'manual' | 'max-attempts' = 'manual'): Promise<void> {
    await this.#finish('dead', [op.put(this.#k.deadKey(this.id), this.buffer)], 'dead-letter', options);
    publish('workQueueDeadLetter', () => ({ ...this.message(), reason }));
  }

  /**
   * Deletes the job, its claim and its counter (plus `extra`) in one Txn
   * guarded by the claim's create revision, as a proven write: its receipt,
   * not the absence of the claim or the job, says that an earlier try whose
   * reply was lost landed. Claim and job both gone without our receipt means
   * the claim was lost first (another worker may have run and acked the
   * job): that rejects. The write is not bound to the session: once sent,
   * it is settled from etcd's state, however long etcd takes to answer.
   * A guard that fails, or an abort that voided the write, leaves the claim
   * held and the job open to another ack or release.
   */
  #finish(outcome: 'acked' | 'dead', extra: Op[], verb: string, options: GuardedWriteOptions): Promise<void> {
    try {
      checkWriteOptions(options);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.#ending) {
      if (this.#outcome === outcome) return this.#ending;
      return Promise.reject(
        new LockNotHeldError(`${this.#what}: cannot ${verb}, already ${this.#outcome ?? 'ending'}`),
      );
    }
    this.#outcome = outcome;
    this.#stopWatch?.(); // our own delete is not a loss
    const session = this.#session;
    const k = this.#k;
    const claim = k.claim(this.id);
    const job = k.job(this.id);
    const what = `${this.#what}: ${verb}`;
    const reopen = (err: unknown): never => {
      this.#ending = undefined;
      this.#outcome = undefined;
      this.#stopWatch = undefined; // watched again from the next look at the signal
      throw err;
    };
    this.#ending = (async () => {
      if (session.expired) {
        this.#linked.abort(session.signal.reason);
        throw new LockNotHeldError(
          `${what}: not written, the session's lease was lost (the job may run again elsewhere)`,
        );
      }
      const guard = await resolveGuard(session.client, options.guard).catch(reopen);
      let out: ProvenOutcome;
      try {
        out = await this.#book.write(
          {
            compares: [cmp.create(claim, '==', this.fencingToken), ...guard.compares],
            success: [op.delete(job), op.delete(claim), op.delete(k.attempt(this.id)), ...extra],
            failure: [op.range(claim, { keysOnly: true }), ...guard.reads],
          },
          { signal: options.signal, what },
        );
      } catch (err) {
        // Aborted and voided: nothing was written, the claim is still ours to ack or release.
        if (options.signal?.aborted && err === options.signal.reason) return reopen(err);
        this.#linked.abort(err);
        throw err;
      }
      if (!out.landed) {
        const [mine, ...reads] = out.failure;
        const held = mine?.type === 'range' && mine.kvs[0]?.createRevision === this.fencingToken;
        if (!held) {
          const lost = new LockNotHeldError(
            `${what}: not written, the claim was lost first (its lease expired, or it was ` +
              'released or deleted); the job may run, or have run, elsewhere',
          );
          this.#linked.abort(lost);
          throw lost;
        }
        if (!guard.holds(reads)) return reopen(guard.error(what));
        return reopen(new Error(`internal: ${what} failed its compares, which all hold`));
      }
      this.#linked.abort(new LockNotHeldError(`${this.#what} ${outcome}`));
      log('%s %s', this.#what, outcome);
    })();
    return this.#ending;
  }

  release(): Promise<void> {
    if (this.#ending) return this.#ending.catch(() => undefined);
    this.#outcome = 'released';
    this.#stopWatch?.();
    const session = this.#session;
    const claim = this.#k.claim(this.id);
    this.#linked.abort(new LockNotHeldError(`${this.#what} released`));
    // Deleting our claim (guarded by its create revision) is harmless to repeat: no receipt is needed.
    this.#ending = (async () => {
      if (session.expired) return; // the claim went with the lease
      await retrying(() => txn(session.client, [cmp.create(claim, '==', this.fencingToken)], [op.delete(claim)]), {
        signals: [session.signal],
        maxElapsedMs: Infinity,
      }).catch((err: unknown) => {
        if (session.expired) return;
        throw err;
      });
      log('%s released', this.#what);
      publish('workQueueRelease', () => this.message());
    })();
    return this.#ending;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}
