import type { WaitOptions } from '../../core/options.js';
import { nameOf, traced } from '../../core/diagnostics.js';
import type { Namespace } from 'etcd3';
import { checkGuard, resolveGuard, type GuardedWriteOptions } from '../../core/guard.js';
import type { Logger } from '../../core/log.js';
import { childPrefix, joinKey, showKey, toBuffer, uniqueKey } from '../../core/keys.js';
import { InternalError } from '../../core/errors.js';
import { cmp, op, range, rangeAt, txn, type Op, type OpResult } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { ReceiptBook } from '../../core/receipts.js';
import { retrying } from '../../core/retry.js';
import {
  checkClient,
  checkInteger,
  checkName,
  checkOptions,
  checkValue,
  checkWaitOptions,
} from '../../core/validate.js';
import type { WatchEvent, WatchSpec } from '../../core/watch-hub.js';
import { ConsumerLine } from '../../core/queue-line.js';
import { OwnSession } from '../../core/queue-sessions.js';
import {
  WINDOW,
  type Candidate,
  type ClaimContext,
  type ClaimOutcome,
  type ClaimSource,
  type SourceScan,
} from '../../core/claim-source.js';
import { createItem } from './create-item.js';

const log = logger('queue');

/** Options of {@link Queue.dequeue}. */
export type DequeueOptions = WaitOptions;

/** Options of {@link Queue.enqueue} and {@link PriorityQueue.enqueue}. */
export type EnqueueOptions = GuardedWriteOptions;

/** Options of the {@link Queue} and {@link PriorityQueue} constructors. */
export interface QueueOptions {
  /**
   * TTL in seconds (default 5) of the lease the object creates for its
   * consumers' waiter line (items and receipts never have a lease). A
   * consumer process that dies while waiting holds up the idle consumers
   * behind it for at most this long. Losing this lease never fails a
   * dequeue: the consumer joins the line again on a new one.
   */
  ttl?: number;
  /** Revoke that lease after this many ms without a dequeue (default 10 000). */
  idleMs?: number;
}

/** An item taken from a queue. */
export interface QueueItem {
  /** The item's key, e.g. `<prefix>/<19 digits>`. */
  key: Buffer;
  /** The item's value, as enqueued. */
  value: Buffer;
}

/**
 * @internal Items under one prefix that a consumer takes by deleting them
 * (Queue, PriorityQueue): the candidates are the oldest items (by mod
 * revision, or by key for the priority queue), and a claim is Go's
 * `deleteRevKey` (delete if the mod revision is still the one we read).
 */
class ItemSource implements ClaimSource<QueueItem> {
  readonly client: Namespace;
  readonly what: string;
  readonly log: Logger;
  readonly waitersPrefix: Buffer;
  readonly watches: WatchSpec[];
  readonly #items: Buffer;
  readonly #taken: ReceiptBook;
  readonly #sort: 'Mod' | 'Key';
  readonly #interchangeable: (cands: Candidate[]) => number;

  constructor(
    client: Namespace,
    items: Buffer,
    book: Buffer,
    taken: ReceiptBook,
    sort: 'Mod' | 'Key',
    what: string,
    log: Logger,
    interchangeable: (cands: Candidate[]) => number,
  ) {
    this.client = client;
    this.#items = items;
    this.#sort = sort;
    this.what = what;
    this.log = log;
    this.waitersPrefix = joinKey(book, 'waiters/');
    this.#taken = taken;
    this.watches = [
      { key: items, prefix: true },
      { key: this.waitersPrefix, prefix: true },
    ];
    this.#interchangeable = interchangeable;
  }

  /**
   * The leading candidates (keys only), and the first one with its value:
   * the item a consumer alone takes next, whose value its claim's receipt
   * must carry. Other values are read only when claimed, so a read never
   * carries more than one item's value.
   */
  scanOps(): Op[] {
    const oldest = { prefix: true, sortTarget: this.#sort, sortOrder: 'Ascend' } as const;
    return [
      op.range(this.#items, { ...oldest, limit: WINDOW, keysOnly: true }),
      op.range(this.#items, { ...oldest, limit: 1 }),
    ];
  }

  parseScan(results: OpResult[]): SourceScan {
    const [keys, head] = results;
    if (keys?.type !== 'range' || head?.type !== 'range') throw new InternalError('scan responses are not ranges');
    const cands: Candidate[] = keys.kvs.map((kv) => ({ key: kv.key, rev: kv.modRevision }));
    const first = head.kvs[0];
    if (first && cands[0] && first.key.equals(cands[0].key) && first.modRevision === cands[0].rev)
      cands[0].value = first.value;
    return { cands, more: keys.more };
  }

  update(cands: Candidate[], events: WatchEvent[]): Candidate[] {
    const items = new Map(cands.map((c) => [c.key.toString('latin1'), c]));
    for (const e of events) {
      const id = e.kv.key.toString('latin1');
      if (e.type === 'delete') items.delete(id);
      else items.set(id, { key: e.kv.key, rev: e.kv.modRevision, value: e.kv.value });
    }
    const byMod = this.#sort === 'Mod';
    return [...items.values()].sort((a, b) =>
      byMod ? (a.rev < b.rev ? -1 : a.rev > b.rev ? 1 : 0) : a.key.compare(b.key),
    );
  }

  interchangeable(cands: Candidate[]): number {
    return this.#interchangeable(cands);
  }

  /**
   * Go's `deleteRevKey` (delete the item if its mod revision is still the
   * one we read), sent as a proven write whose receipt holds the item's
   * value: a claim whose reply was lost is found by its receipt, with the
   * value, after any outage and any compaction, and delivered once. The
   * value at `c.rev` is known before the claim (a delete guarded by that
   * mod revision takes exactly that value); if the read that found the
   * item did not carry it, one read fetches it first.
   */
  async claim(c: Candidate, ctx: ClaimContext): Promise<ClaimOutcome<QueueItem>> {
    let value = c.value;
    if (!value) {
      const res = await retrying(() => txn(this.client, [], [op.range(c.key), ...ctx.scan]), {
        signals: [ctx.signal],
        maxElapsedMs: Infinity,
      });
      const kv = rangeAt(res, 0).kvs[0];
      if (!kv || kv.modRevision !== c.rev) return { won: false, scan: res.responses.slice(1) };
      value = kv.value;
    }
    const waiterOps = ctx.waiter ? [op.delete(ctx.waiter.key)] : [];
    const out = await this.#taken.write(
      {
        compares: [cmp.mod(c.key, '==', c.rev)],
        success: [op.delete(c.key), ...waiterOps, ...ctx.scan],
        failure: ctx.scan,
      },
      { signal: ctx.signal, what: `${this.what}: claim of ${showKey(c.key)}`, receiptValue: value },
    );
    if (!out.landed) return { won: false, scan: out.failure };
    if (!out.res) {
      this.log('%s: claim of %s committed on an earlier try', this.what, showKey(c.key));
      return { won: true, result: { key: c.key, value: out.receiptValue ?? value } };
    }
    return { won: true, result: { key: c.key, value }, next: out.res.responses.slice(1 + waiterOps.length) };
  }
}

/**
 * What Queue and PriorityQueue share: the consumer side (a
 * herd-free line over the items) and the lease of its bookkeeping keys.
 */
export abstract class ItemQueue implements AsyncDisposable {
  /** The etcd3 client (or namespace). */
  readonly client: Namespace;
  /** `<name>/`: where the items live. */
  protected readonly items: Buffer;
  /** Names the queue in errors and logs. */
  protected readonly what: string;
  /** @internal The name and recipe as diagnostics messages show them. */
  protected readonly diagName: string;
  /** @internal */
  protected readonly kind: 'queue' | 'priority-queue';
  /** @internal Receipts of this object's enqueues, under `__<name>/sent/`. */
  protected readonly sent: ReceiptBook;
  /** Receipts of this object's claims, under `__<name>/taken/`. */
  readonly #taken: ReceiptBook;
  readonly #own: OwnSession;
  readonly #line: ConsumerLine<QueueItem>;
  readonly #log: Logger;

  /**
   * @param argument - the name argument's name, for error messages
   * @param interchangeable - how many leading candidates competing consumers may take in any order
   */
  protected constructor(
    client: Namespace,
    name: string | Buffer,
    argument: string,
    options: QueueOptions,
    kind: string,
    sort: 'Mod' | 'Key',
    interchangeable: (items: Buffer) => (cands: Candidate[]) => number,
    queueLog: Logger,
  ) {
    checkClient(client);
    checkName(name, argument);
    checkOptions(options);
    if (options.ttl !== undefined) checkInteger(options.ttl, 'options.ttl', 1, 3600);
    if (options.idleMs !== undefined) checkInteger(options.idleMs, 'options.idleMs', 0);
    this.client = client;
    this.items = childPrefix(name);
    this.what = `${kind} ${showKey(name)}`;
    this.diagName = nameOf(name);
    this.kind = kind === 'priority queue' ? 'priority-queue' : 'queue';
    this.#log = queueLog;
    // Go's bookkeeping prefix, `__<name>/`: outside the items' prefix, unseen by Go's consumers.
    const book = joinKey('__', name, '/');
    this.sent = new ReceiptBook(client, joinKey(book, 'sent/'));
    this.#taken = new ReceiptBook(client, joinKey(book, 'taken/'));
    this.#own = new OwnSession(client, options.ttl ?? 5, options.idleMs ?? 10_000, queueLog);
    const source = new ItemSource(
      client,
      this.items,
      book,
      this.#taken,
      sort,
      this.what,
      queueLog,
      interchangeable(this.items),
    );
    this.#line = new ConsumerLine(source, this.#own);
  }

  /** Checks enqueue options (before anything is written). */
  protected static checkEnqueueOptions(options: EnqueueOptions): void {
    checkWaitOptions(options);
    checkGuard(options.guard);
  }

  /**
   * Removes and returns the next item, waiting while the queue is empty.
   * Each item is returned by exactly one dequeue, also when a reply is lost,
   * whatever the outage or compaction that follows; losing the queue's
   * internal lease never fails it. If the signal aborts while a claim is
   * already in flight and that claim wins, the item is returned rather than
   * dropped.
   * @returns the item's value as a UTF-8 string
   * @throws OutcomeUnknownError only if the signal aborted while a claim was in flight and etcd stayed
   *   unreachable: the item may have been taken; its value is kept in the claim's receipt (docs/queue.md)
   */
  async dequeue(options: DequeueOptions = {}): Promise<string> {
    return (await this.dequeueItem(options)).value.toString();
  }

  /** Like `dequeue()`, returning the item's key and its value as bytes. */
  async dequeueItem(options: DequeueOptions = {}): Promise<QueueItem> {
    checkWaitOptions(options);
    return traced(
      'dequeue',
      () => ({ recipe: this.kind, name: this.diagName }),
      () => this.#line.take(options.signal),
      (item, _, waitMs) => ({ key: item.key.toString(), waitMs }),
    );
  }

  /** The number of items in the queue now. */
  async size(): Promise<number> {
    const r = await range(this.client, this.items, { prefix: true, countOnly: true });
    return Number(r.count);
  }

  /**
   * Revokes the lease this object uses for its consumers' waiter line and
   * deletes its spent receipts. Items are untouched. Dequeues after
   * `close()` reject.
   */
  async close(): Promise<void> {
    await this.#own.close();
    await Promise.all([this.sent.flush(), this.#taken.flush()]).catch((err: unknown) =>
      this.#log('%s: receipt cleanup failed (left for the next writer): %s', this.what, (err as Error).message),
    );
  }

  /** `await using q = new Queue(...)` closes it at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * A distributed FIFO queue, wire-compatible with Go's `recipe.Queue`: each
 * item is the key `<prefix>/<19-digit nanoseconds>` (no lease) holding the
 * value, and items come out in order of their mod revision. Each item is
 * delivered to exactly one consumer (a delete guarded by its mod revision).
 *
 * Unlike Go's, consumers do not herd: an idle consumer waits in a line, and
 * only the head of the line watches the items, so one new item wakes one
 * consumer. Consumers that compete for a backlog spread their claims over
 * the oldest items instead of all racing for the first one.
 *
 * Delivery is at most once past `dequeue()`: the item is deleted when it is
 * handed out. For at-least-once processing with acknowledgements use
 * {@link WorkQueue}.
 */
export class Queue extends ItemQueue {
  /** The queue's name; items live under `<name>/` (the same argument as PriorityQueue's). */
  readonly name: string | Buffer;
  /** The same as {@link Queue.name} (Go's `keyPrefix`). */
  readonly prefix: string | Buffer;

  /**
   * @param client - an etcd3 client or namespace
   * @param name - the queue's name (Go's `keyPrefix`); items live under `<name>/`
   * @param options - lease settings of the consumers' bookkeeping
   * @throws InvalidArgumentError for an empty name, a non-client or bad options
   */
  constructor(client: Namespace, name: string | Buffer, options: QueueOptions = {}) {
    super(client, name, 'name', options, 'queue', 'Mod', () => (c) => c.length, log);
    this.name = name;
    this.prefix = name;
  }

  /**
   * Appends an item: creates `<prefix>/<19-digit nanoseconds>` (no lease)
   * if absent, retrying with a new name on a collision (Go's `newUniqueKV`).
   * The same Txn writes a receipt under `__<prefix>/sent/`, so a retry after
   * a lost reply never enqueues twice.
   * @param options - `guard` (fencing) and `signal`
   * @returns the item's key
   * @throws InvalidArgumentError if `value` is not a string or Buffer, or for a bad guard
   * @throws NotLeaderError / LockNotHeldError if the guard does not hold (nothing written)
   * @throws OutcomeUnknownError if the signal aborted while etcd was unreachable mid-write
   */
  async enqueue(value: string | Buffer, options: EnqueueOptions = {}): Promise<string> {
    checkValue(value, 'value');
    ItemQueue.checkEnqueueOptions(options);
    return traced(
      'enqueue',
      () => ({ recipe: 'queue' as const, name: this.diagName }),
      async () => {
        const guard = await resolveGuard(this.client, options.guard);
        const key = await createItem(
          this.sent,
          () => uniqueKey(this.items),
          toBuffer(value),
          guard,
          `${this.what}: enqueue`,
          options.signal,
        );
        return key.toString();
      },
      (key) => ({ key }),
    );
  }
}
