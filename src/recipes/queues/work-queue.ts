import type { WaitOptions } from '../../core/options.js';
import { nameOf, publish, traced } from '../../core/diagnostics.js';
import type { ComparatorBuilder, Namespace } from 'etcd3';
import { InternalError, InvalidArgumentError } from '../../core/errors.js';
import { resolveGuard, type GuardedWriteOptions } from '../../core/guard.js';
import { showKey, toBuffer, uniqueSuffix } from '../../core/keys.js';
import { cmp, op, range, rangeAt, txn } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { ReceiptBook } from '../../core/receipts.js';
import { retrying } from '../../core/retry.js';
import { checkSession, type Session } from '../../core/session.js';
import { checkClient, checkInteger, checkName, checkOptions, checkSignal, checkValue } from '../../core/validate.js';
import { ConsumerLine, type JoinCarrier } from '../../core/queue-line.js';
import { GivenSession } from '../../core/queue-sessions.js';
import { createItem } from './create-item.js';
import { checkWriteOptions, ClaimedJob } from './work-queue/claimed-job.js';
import { JobSource } from './work-queue/job-source.js';
import { type JobHandler, runWorkers, type WorkOptions } from './work-queue/workers.js';
import { ID, Layout, type Claimed } from './work-queue/layout.js';

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
export type { JobHandler, WorkOptions } from './work-queue/workers.js';

/** Options of {@link WorkQueue.add}. */
export interface AddJobOptions extends GuardedWriteOptions {
  /** 0 (claimed first) to 65535; default {@link DEFAULT_JOB_PRIORITY}. */
  priority?: number;
}

/** Options of {@link WorkQueue.claim}. */
export interface ClaimOptions extends WaitOptions {
  /**
   * A job claimed from this object to ack first: its ack and this claim's
   * place in line go in one Txn, a round trip less than `ack()` then
   * `claim()` (the loop of a worker that takes job after job). The ack is
   * the one {@link Job.ack} makes, with `signal` and no guard; when it
   * fails, claim() rejects with its error and claims nothing.
   */
  ack?: Job;
}

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
  /** The session whose lease holds this object's claims and waiter keys; undefined for a producer (a client). */
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
  /** Jobs this object claimed, which `claim({ ack })` accepts. */
  readonly #claimed = new WeakSet<Job>();

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
   * @param options - `signal`, and `ack`: a job of this object to ack in the same request
   * @throws SessionExpiredError if the session's lease is lost (or was closed)
   * @throws InvalidArgumentError if this object was built from a plain client (no session to hold a claim),
   *   or `options.ack` is not a job claimed from this object
   * @throws LockNotHeldError / OutcomeUnknownError as {@link Job.ack} does, for `options.ack` (nothing claimed)
   */
  async claim(options: ClaimOptions = {}): Promise<Job> {
    checkOptions(options);
    checkSignal(options.signal);
    const acked = options.ack;
    if (acked !== undefined && !this.#claimed.has(acked)) {
      throw new InvalidArgumentError('options.ack', `${this.#what}: not a job claimed from this WorkQueue object`);
    }
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
        let carrier: JoinCarrier | undefined =
          acked && ((join) => (acked as ClaimedJob).ackCarrying(join, { signal: options.signal }));
        for (;;) {
          const c = await line.take(options.signal, carrier);
          carrier = undefined;
          const job = new ClaimedJob(session, this.#k, c, this.#what, this.#book, name);
          this.#claimed.add(job);
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
   * Runs `handler` for job after job until `options.signal` aborts: a worker
   * in one call. A job whose handler resolves is acked by the next claim's
   * Txn (`claim({ ack })`: three requests per job), the last one on its own
   * when the workers stop; a job whose handler throws is given back at once
   * (another attempt; dead-lettered past `maxAttempts`) and reported to
   * `options.onError`. A handler may also ack, release or dead-letter its
   * job itself. The handler should watch `job.signal`, which aborts when the
   * claim may be lost.
   * @param handler - the work for one job
   * @param options - `signal` (stop), `concurrency` (jobs at once, default 1), `onError`
   * @returns resolves once stopped by `options.signal` and every running handler finished
   * @throws InvalidArgumentError for a bad handler or options, or a WorkQueue built from a plain client
   * @throws SessionExpiredError if the session is lost or closed; ClosedError if the client closes
   */
  async work(handler: JobHandler, options: WorkOptions = {}): Promise<void> {
    await runWorkers(this, handler, options, this.#what);
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
    if (typeof id !== 'string' || !ID.test(id)) {
      const got = typeof id === 'string' ? JSON.stringify(id) : typeof id;
      throw new InvalidArgumentError('id', `must be a job ID like "00100-1732212345678901234", got ${got}`);
    }
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
    throw new InternalError(`${what}: the dead job kept changing`);
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
