import type { Namespace } from 'etcd3';
import { InternalError } from '../../../core/errors.js';
import type { Logger } from '../../../core/log.js';
import type { Candidate, ClaimContext, ClaimOutcome, ClaimSource, SourceScan } from '../../../core/claim-source.js';
import { WINDOW } from '../../../core/claim-source.js';
import { prefixEnd, showKey } from '../../../core/keys.js';
import { cmp, op, rangeAt, txn, type Op, type OpResult } from '../../../core/kv.js';
import { logger } from '../../../core/log.js';
import type { ReceiptBook } from '../../../core/receipts.js';
import { retrying } from '../../../core/retry.js';
import type { WatchEvent, WatchSpec } from '../../../core/watch-hub.js';
import type { Claimed, Layout } from './layout.js';

const log = logger('work-queue');

/**
 * @internal Jobs that a claimer takes by creating a claim key next to them:
 * a job is claimable while no claim key exists for it. Candidates are the
 * unclaimed jobs in key order (priority, then age).
 */
export class JobSource implements ClaimSource<Claimed> {
  readonly client: Namespace;
  readonly what: string;
  readonly log: Logger = log;
  readonly waitersPrefix: Buffer;
  readonly watches: WatchSpec[];
  readonly #k: Layout;
  readonly #book: ReceiptBook;
  /** Jobs (and claims) read per scan. */
  #window = WINDOW;
  /** The scan's cursor (a job ID, or a key just past one): at the last read, every job before it was claimed. */
  #from: Buffer | undefined;

  constructor(client: Namespace, k: Layout, book: ReceiptBook, what: string) {
    this.client = client;
    this.#k = k;
    this.#book = book;
    this.what = what;
    this.waitersPrefix = k.waiters;
    // One watch, so that the events of a Txn (a claim and the waiter key it deletes) come together. It
    // starts at claims/: the attempt records (a put per claim, a delete per ack) would reach every consumer.
    this.watches = [{ key: k.claims, end: prefixEnd(k.waiters) }];
  }

  /**
   * A page of jobs and a page of claims, both from the cursor, and the
   * number of jobs and of claims before it. A claim exists only next to its
   * job, so equal counts say every job before the cursor is claimed, and the
   * page of claims covers every claimed job in the page of jobs: a claim
   * reads a window of keys whatever the jobs in flight (docs/work-queue.md).
   */
  scanOps(): Op[] {
    const k = this.#k;
    const from = this.#from;
    const page = (dir: Buffer) =>
      op.range(from ? Buffer.concat([dir, from]) : dir, {
        end: prefixEnd(dir),
        sortTarget: 'Key',
        sortOrder: 'Ascend',
        limit: this.#window,
        keysOnly: true,
      });
    if (!from) return [page(k.jobs), page(k.claims)];
    const before = (dir: Buffer) => op.range(dir, { end: Buffer.concat([dir, from]), countOnly: true });
    return [page(k.jobs), page(k.claims), before(k.jobs), before(k.claims)];
  }

  parseScan(results: OpResult[]): SourceScan {
    const [jobs, claims, jobsBefore, claimsBefore] = results;
    if (jobs?.type !== 'range' || claims?.type !== 'range') throw new InternalError('scan responses are not ranges');
    const k = this.#k;
    if (jobsBefore?.type === 'range' && claimsBefore?.type === 'range' && jobsBefore.count !== claimsBefore.count) {
      // A job before the cursor is claimable again (released, expired, or a new job of a lower priority number).
      this.#from = undefined;
      this.#window = WINDOW;
      return { cands: [], incomplete: true };
    }
    const claimed = new Set(claims.kvs.map((kv) => k.idIn(k.claims, kv.key)));
    // Past the last claim read, a job in the page may have a claim we did not see (an orphaned claim).
    const lastClaim = claims.more ? k.idIn(k.claims, claims.kvs.at(-1)!.key) : undefined;
    const seen = jobs.kvs.filter((kv) => lastClaim === undefined || k.idIn(k.jobs, kv.key)! <= lastClaim);
    const cands = seen
      .filter((kv) => !claimed.has(k.idIn(k.jobs, kv.key)))
      .map((kv) => ({ key: kv.key, rev: kv.createRevision }));
    if (cands.length) {
      this.#from = cands[0]!.key.subarray(k.jobs.length);
      this.#window = WINDOW;
      return { cands, more: jobs.more || seen.length < jobs.kvs.length };
    }
    const last = seen.at(-1);
    if (!last || !(jobs.more || seen.length < jobs.kvs.length)) return { cands };
    // A page of claimed jobs: move past it, with a wider page.
    this.#from = Buffer.concat([last.key.subarray(k.jobs.length), Buffer.from([0])]);
    this.#window *= 2;
    return { cands, incomplete: true };
  }

  /** Jobs put, claimed or acked update the candidates; a claim deleted without its job (released, expired): read. */
  update(cands: Candidate[], events: WatchEvent[]): Candidate[] | undefined {
    const k = this.#k;
    const ours = (e: WatchEvent) => k.idIn(k.jobs, e.kv.key) ?? k.idIn(k.claims, e.kv.key);
    if (!events.some(ours)) return cands;
    const jobs = new Map(cands.map((c) => [k.idIn(k.jobs, c.key)!, c]));
    const acked = new Set(events.filter((e) => e.type === 'delete').map((e) => k.idIn(k.jobs, e.kv.key)));
    for (const e of events) {
      const job = k.idIn(k.jobs, e.kv.key);
      const claim = job === undefined ? k.idIn(k.claims, e.kv.key) : undefined;
      if (job !== undefined) {
        if (e.type === 'delete') jobs.delete(job);
        else jobs.set(job, { key: e.kv.key, rev: e.kv.createRevision });
      } else if (claim !== undefined) {
        if (e.type === 'put') jobs.delete(claim);
        else if (!acked.has(claim)) return undefined;
      }
    }
    return [...jobs.values()].sort((a, b) => a.key.compare(b.key));
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
