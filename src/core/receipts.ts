import type { Namespace } from 'etcd3';
import { toBuffer, uniqueKey } from './keys.js';
import { cmp, op, rangeAt, txn, type Compare, type Op, type KeyValue, type OpResult, type TxnResult } from './kv.js';
import { logger } from './log.js';
import { clientScope } from './client.js';
import { OutcomeUnknownError } from './errors.js';
import { processWide } from './shared.js';
import { retrying } from './retry.js';
import { isTransient } from './etcd-errors.js';

const log = logger('receipts');

/*
 * The one way the recipes write something someone else consumes, whose reply
 * may be lost: a Txn harmless to re-send, carrying a receipt that proves it
 * landed. Why, and the other proofs: docs/internals.md, "Outcome unknown means
 * prove it". The writer deletes a receipt in its next write (no extra round
 * trip) or on close; a writer that dies leaves one small key.
 */

/** The first byte of a receipt: the write landed (the caller's receipt value follows), or it was voided. */
const LANDED = Buffer.from('L');
const VOIDED = Buffer.from('V');

/** A copy of a write delayed inside etcd or the network for longer than this would be unheard of. */
export const LATE_COPY_MS = 60_000;

/** For an OUTCOME_UNKNOWN of {@link ReceiptBook.write}: settles once the write's fate is decided in etcd. */
const deciding = new WeakMap<object, Promise<void>>();

/**
 * Settles once the write that rejected with `err` (OUTCOME_UNKNOWN) can no
 * longer land: its receipt voided, or found landed, or after LATE_COPY_MS.
 * A cleanup of what that write creates must wait for it: sent earlier, it may
 * reach etcd together with the held write and be applied first
 * (docs/internals.md, "Outcome unknown means prove it"). Resolved at once for
 * any other error.
 */
export function writeDecided(err: unknown): Promise<void> {
  return (typeof err === 'object' && err !== null && deciding.get(err)) || Promise.resolve();
}

/** A Txn that may be re-sent, with the receipt that proves it landed. */
export interface ProvenTxn {
  compares: Compare[];
  success: Op[];
  /** Reads for the caller when the compares fail for a reason other than our own earlier landing. */
  failure?: Op[];
}

/** What became of a proven write. */
export type ProvenOutcome =
  /**
   * It landed, at `revision`. `res` is the reply of the attempt that did, or
   * undefined when only the receipt said so (`receiptValue` is then the
   * value given to the write). `aborted` is the signal's reason when the
   * caller gave up after the send and the write had landed all the same:
   * the caller undoes it if it can (and rejects), or reports it.
   */
  | { landed: true; revision: bigint; res: TxnResult | undefined; receiptValue?: Buffer; aborted?: unknown }
  /** The compares failed and no attempt of ours landed: `failure` holds the failure branch's reads, at `revision`. */
  | { landed: false; failure: OpResult[]; revision: bigint };

/** Options of {@link ReceiptBook.write}. */
export interface ProvenWriteOptions {
  /**
   * Stops the retries. If an attempt was already sent, the write is then
   * voided (it can no longer land) and the call rejects with the reason, or
   * it is found landed and reported as such; never left to chance.
   */
  signal?: AbortSignal;
  /** What the write is, for logs and the OUTCOME_UNKNOWN message. */
  what: string;
  /**
   * A value to store in the receipt (e.g. the value a consume took), returned when only the receipt
   * proves the landing.
   */
  receiptValue?: string | Buffer;
  /** Sends each attempt (default: a Txn of its own); STM's shared commits pass theirs. */
  send?: (compares: Compare[], success: Op[], failure: Op[]) => Promise<TxnResult>;
  /** At most this many spent receipts are deleted by this write (default 32): room left under --max-txn-ops. */
  cleanup?: number;
}

/**
 * Books with receipts still to delete. A process that finishes its work
 * without closing its client deletes them on its way out ('beforeExit'),
 * instead of leaving one small key per writer behind; closing the client
 * deletes them first too (ClientScope.beforeClose).
 */
const unflushed = () =>
  processWide('unflushed-receipts', () => {
    const books = new Set<ReceiptBook>();
    process.on('beforeExit', () => {
      const batch = [...books];
      books.clear();
      for (const book of batch) void book.flush().catch(() => undefined);
    });
    return books;
  });

/** Receipts of one writer (a queue object, a consumer...) under `dir`. */
export class ReceiptBook {
  readonly #client: Namespace;
  readonly #dir: Buffer;
  readonly #spent: Buffer[] = [];
  #flushTimer: NodeJS.Timeout | undefined;
  #untidy: (() => void) | undefined;
  readonly #idleFlush: boolean;

  /**
   * @param client - the client the writes go through
   * @param dir - the receipts' directory, ending with '/'; nothing else lives there
   * @param idleFlush - delete spent receipts 2 s after the last write; without it, only with the next write,
   *   on close and at exit (STM: no write of its own between the user's)
   */
  constructor(client: Namespace, dir: Buffer, idleFlush = true) {
    this.#client = client;
    this.#dir = dir;
    this.#idleFlush = idleFlush;
  }

  /**
   * Sends `t` until its outcome is known. The receipt's put joins the
   * success branch and its absence joins the compares, so a re-sent Txn
   * whose first copy landed fails and finds the receipt. Receipts spent by
   * earlier writes are deleted in the same Txn. Transient errors are
   * retried for as long as the signal allows; the receipt stays valid across
   * any outage, so this never has to guess.
   */
  async write(t: ProvenTxn, o: ProvenWriteOptions): Promise<ProvenOutcome> {
    o.signal?.throwIfAborted();
    const receipt = uniqueKey(this.#dir);
    const spent = this.#spent.splice(0, o.cleanup ?? 32);
    const send = o.send ?? ((c: Compare[], s: Op[], f: Op[]) => txn(this.#client, c, s, f));
    const cleanup = spent.map((k) => op.delete(k));
    const landedMark = Buffer.concat([LANDED, toBuffer(o.receiptValue ?? '')]);
    let sent = false;
    let res: TxnResult;
    try {
      res = await retrying(
        () => {
          sent = true;
          return send(
            [...t.compares, cmp.create(receipt, '==', 0n)],
            [...t.success, op.put(receipt, landedMark), ...cleanup],
            [op.range(receipt), ...(t.failure ?? []), ...cleanup],
          );
        },
        { signals: [o.signal], maxElapsedMs: Infinity },
      );
    } catch (err) {
      this.#spent.push(...spent);
      if (sent && o.signal?.aborted) return this.#settleAborted(receipt, o, err);
      // etcd refused the write (permission, a bad lease, a closed client): nothing landed, or
      // (closed client) nothing more can be known; the error says which.
      throw err;
    }
    // Aborted while the attempt that landed was in flight: the caller learns it landed all the same.
    const aborted = o.signal?.aborted ? (o.signal.reason as unknown) : undefined;
    if (res.succeeded) {
      this.spend(receipt);
      const own = { ...res, responses: res.responses.slice(0, t.success.length) };
      return { landed: true, revision: res.revision, res: own, aborted };
    }
    const [found, ...failure] = res.responses;
    const kv = found?.type === 'range' ? found.kvs[0] : undefined;
    if (kv) return this.#landedByReceipt(receipt, kv, aborted);
    if (aborted !== undefined) throw aborted;
    return { landed: false, failure: failure.slice(0, t.failure?.length ?? 0), revision: res.revision };
  }

  /**
   * The caller gave up after a send. A copy of the write may still be on its
   * way to etcd, so reading the receipt is not enough: void it (create it
   * with a mark no write carries), and no later copy can land. Voided: the
   * call rejects with the abort reason and nothing was written. Found landed:
   * the write happened, and the caller learns it (`aborted`). Unreachable:
   * OUTCOME_UNKNOWN.
   */
  async #settleAborted(receipt: Buffer, o: ProvenWriteOptions, reason: unknown): Promise<ProvenOutcome> {
    // Voiding is harmless to repeat (create-if-absent): core's retry policy, bounded by `maxElapsedMs`.
    const voiding = (maxElapsedMs: number) =>
      retrying(
        () => txn(this.#client, [cmp.create(receipt, '==', 0n)], [op.put(receipt, VOIDED)], [op.range(receipt)]),
        { maxElapsedMs },
      );
    // Then the receipt goes: no delayed copy can land on a receipt that is still there.
    const spendLater = () => setTimeout(() => this.spend(receipt), LATE_COPY_MS).unref();
    const res = await voiding(2000).catch((err: unknown) => {
      if (!isTransient(err)) throw err;
      const unknown = new OutcomeUnknownError(
        `${o.what}: aborted while etcd was unreachable; the write may or may not have happened`,
        { cause: reason },
      );
      // The caller gives up now; its cleanups wait until the write can no longer land.
      deciding.set(
        unknown,
        voiding(LATE_COPY_MS)
          .then(spendLater, spendLater)
          .then(() => undefined),
      );
      throw unknown;
    });
    const kv = res.succeeded ? undefined : rangeAt(res, 0).kvs[0];
    if (!kv || kv.value.equals(VOIDED)) {
      spendLater();
      throw reason;
    }
    return this.#landedByReceipt(receipt, kv, reason);
  }

  /** Only the receipt `kv` says the write landed. */
  #landedByReceipt(receipt: Buffer, kv: KeyValue, aborted: unknown): ProvenOutcome {
    this.spend(receipt);
    return {
      landed: true,
      revision: kv.createRevision,
      res: undefined,
      receiptValue: kv.value.subarray(LANDED.length),
      aborted,
    };
  }

  /** The receipt is no longer needed: it is deleted with the next write, or by {@link flush}. */
  spend(receipt: Buffer): void {
    this.#spent.push(receipt);
    this.#untidy ??= clientScope(this.#client).beforeClose(() => this.flush());
    unflushed().add(this);
    // A writer that stops writing still cleans up, a little later.
    if (!this.#idleFlush) return;
    this.#flushTimer ??= setTimeout(() => {
      this.#flushTimer = undefined;
      void this.flush().catch((err: unknown) => log('receipt cleanup failed: %s', (err as Error).message));
    }, 2000).unref();
  }

  /**
   * Hands over up to 32 spent receipts for the caller to delete in a Txn of
   * its own (in both branches), so that a writer whose next write is not a
   * proven one (a claim proven by its lease) still cleans up without an
   * extra round trip. Give them back with {@link spend} if that Txn failed.
   */
  takeSpent(): Buffer[] {
    return this.#spent.splice(0, 32);
  }

  /** Deletes every spent receipt now (on close). */
  async flush(): Promise<void> {
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    const batch = this.#spent.splice(0);
    this.#untidy?.();
    this.#untidy = undefined;
    unflushed().delete(this);
    if (!batch.length) return;
    // Deletes are harmless to repeat: a late reply under load must not leave the receipts behind for good.
    const deletes = batch.map((k) => op.delete(k));
    await retrying(() => txn(this.#client, [], deletes), { maxElapsedMs: 5000 }).catch((err: unknown) => {
      this.#spent.push(...batch);
      throw err;
    });
  }
}
