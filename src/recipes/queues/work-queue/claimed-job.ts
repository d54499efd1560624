import type { ComparatorBuilder } from 'etcd3';
import { publish, traced } from '../../../core/diagnostics.js';
import { InternalError, LockNotHeldError, withoutStack } from '../../../core/errors.js';
import { checkGuard, resolveGuard, type GuardedWriteOptions } from '../../../core/guard.js';
import { Holding } from '../../../core/holding.js';
import { cmp, op, type Compare, type Op, type OpResult } from '../../../core/kv.js';
import { logger } from '../../../core/log.js';
import type { ProvenOutcome, ReceiptBook } from '../../../core/receipts.js';
import type { Session } from '../../../core/session.js';
import { checkOptions, checkSignal } from '../../../core/validate.js';
import type { Job } from '../work-queue.js';
import type { Claimed, Layout } from './layout.js';

const log = logger('work-queue');

/** More of a finishing write: ops of its success branch (and compares) that travel with it. */
interface Carried {
  compares?: Compare[];
  success: Op[];
}

/** A finishing write that landed: its revision, and the results of the carried ops (undefined: proven by receipt). */
export interface Finished {
  revision: bigint;
  results: OpResult[] | undefined;
}

const noop = (): undefined => undefined;

/** Checks the options of a guarded write (before anything is written). */
export function checkWriteOptions(options: GuardedWriteOptions): void {
  checkOptions(options);
  checkGuard(options.guard);
  checkSignal(options.signal);
}

/**
 * A claimed job: its claim key is a core `Holding` (signal, own-key watch,
 * ifOwner, release). An ack or dead-letter ends it with a proven write of
 * its own; one that a guard refused, or an abort voided, leaves the claim
 * held (its signal live, its own-key watch resumed).
 */
export class ClaimedJob implements Job {
  readonly id: string;
  readonly priority: number;
  readonly buffer: Buffer;
  readonly attempts: number;
  readonly fencingToken: bigint;
  readonly #session: Session;
  readonly #k: Layout;
  readonly #book: ReceiptBook;
  readonly #what: string;
  readonly #hold: Holding;
  /** The ack, dead-letter or release under way or done (a release resolves with nothing). */
  #ending: Promise<Finished | undefined> | undefined;
  #outcome: 'acked' | 'released' | 'dead' | undefined;

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
    this.#hold = new Holding(session, k.claim(c.id), c.token, () => undefined, this.#what, { log });
  }

  get value(): string {
    return this.buffer.toString();
  }

  get key(): string {
    return this.#hold.key;
  }

  get signal(): AbortSignal {
    return this.#hold.signal;
  }

  get done(): boolean {
    return this.#hold.released;
  }

  ifOwner(): ComparatorBuilder {
    return this.#hold.ifOwner();
  }

  /** @internal This job as diagnostics messages show it. */
  message(): { name: string; id: string; key: string; fencingToken: bigint; attempts: number } {
    return { name: this.#name, id: this.id, key: this.key, fencingToken: this.fencingToken, attempts: this.attempts };
  }

  async ack(options: GuardedWriteOptions = {}): Promise<void> {
    await this.ackCarrying({ success: [] }, options);
  }

  /**
   * @internal {@link ack}, with `carried` in the same Txn (WorkQueue.claim's
   * `ack`: the claimer's next place in line). Resolves undefined when an
   * earlier call acked this job (or is acking it): that write carries none of `carried`.
   */
  async ackCarrying(carried: Carried, options: GuardedWriteOptions): Promise<Finished | undefined> {
    const earlier = this.#outcome === 'acked' && this.#ending;
    const done = await traced(
      'ack',
      () => this.message(),
      () => this.#finish('acked', carried, 'ack', options),
      () => ({}),
    );
    return earlier || !done ? undefined : done;
  }

  async deadLetter(options: GuardedWriteOptions = {}, reason: 'manual' | 'max-attempts' = 'manual'): Promise<void> {
    await this.#finish('dead', { success: [op.put(this.#k.deadKey(this.id), this.buffer)] }, 'dead-letter', options);
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
  #finish(
    outcome: 'acked' | 'dead',
    carried: Carried,
    verb: string,
    options: GuardedWriteOptions,
  ): Promise<Finished | undefined> {
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
    const resumeWatch = this.#hold.pauseWatch(); // our own delete is not a loss
    const session = this.#session;
    const k = this.#k;
    const claim = k.claim(this.id);
    const job = k.job(this.id);
    const what = `${this.#what}: ${verb}`;
    const reopen = (err: unknown): never => {
      this.#ending = undefined;
      this.#outcome = undefined;
      resumeWatch();
      throw err;
    };
    this.#ending = (async () => {
      if (session.expired) {
        throw new LockNotHeldError(
          `${what}: not written, the session's lease was lost (the job may run again elsewhere)`,
        );
      }
      const guard = await resolveGuard(session.client, options.guard).catch(reopen);
      let out: ProvenOutcome;
      try {
        out = await this.#book.write(
          {
            compares: [cmp.create(claim, '==', this.fencingToken), ...guard.compares, ...(carried.compares ?? [])],
            success: [op.delete(job), op.delete(claim), op.delete(k.attempt(this.id)), ...carried.success],
            failure: [op.range(claim, { keysOnly: true }), ...guard.reads],
          },
          { signal: options.signal, what },
        );
      } catch (err) {
        // Aborted and voided: nothing was written, the claim is still ours to ack or release.
        if (options.signal?.aborted && err === options.signal.reason) return reopen(err);
        this.#hold.end(err);
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
          this.#hold.end(lost);
          throw lost;
        }
        if (!guard.holds(reads)) return reopen(guard.error(what));
        return reopen(new InternalError(`${what} failed its compares, which all hold`));
      }
      // The hold's normal end: a stack would say nothing, and capturing one cost 1–2 % of a consumer's CPU.
      this.#hold.end(withoutStack(() => new LockNotHeldError(`${this.#what} ${outcome}`)));
      log('%s %s', this.#what, outcome);
      return { revision: out.revision, results: out.res?.responses.slice(3) };
    })();
    return this.#ending;
  }

  release(): Promise<void> {
    if (this.#ending) return this.#ending.then(noop, noop);
    this.#outcome = 'released';
    const expired = this.#session.expired; // then the claim went with the lease
    // Deleting our claim (guarded by its create revision) is harmless to repeat: no receipt is needed.
    const released = this.#hold.release().then(() => {
      if (!expired) publish('workQueueRelease', () => this.message());
    });
    this.#ending = released.then(noop);
    return released;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}
