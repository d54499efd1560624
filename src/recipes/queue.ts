import type { Namespace } from 'etcd3';
import type { Logger } from '../core/log.js';
import { childPrefix, showKey, toBuffer, uniqueKey } from '../core/keys.js';
import { cmp, op, range, rangeAt, txn, type Op, type OpResult } from '../core/kv.js';
import { logger } from '../core/log.js';
import { checkClient, checkInteger, checkName, checkOptions, checkSignal, checkValue } from '../core/validate.js';
import type { WatchEvent, WatchSpec } from '../core/watch-hub.js';
import {
  ConsumerLine, createUnique, OwnSession, WINDOW,
  type Candidate, type ClaimContext, type ClaimOutcome, type ClaimSource, type SourceScan,
} from './queue-line.js';

const log = logger('queue');

/** Options of {@link Queue.dequeue}. */
export interface DequeueOptions {
  /** Abort the wait; the call then rejects with the signal's reason and leaves no key behind. */
  signal?: AbortSignal;
}

/** Options of the {@link Queue} and {@link PriorityQueue} constructors. */
export interface QueueOptions {
  /**
   * TTL in seconds (default 5) of the lease the object creates for its
   * consumers' bookkeeping keys (waiter line and receipts; items never have
   * a lease). A consumer process that dies while waiting holds up the idle
   * consumers behind it for at most this long.
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

/** Go's bookkeeping prefix for a queue name: `__<name>/` (outside the items' prefix). */
function bookPrefix(name: string | Buffer): Buffer {
  return Buffer.concat([Buffer.from('__'), toBuffer(name), Buffer.from('/')]);
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
  readonly headWatch: WatchSpec;
  readonly #items: Buffer;
  readonly #receipts: Buffer;
  readonly #sort: 'Mod' | 'Key';
  readonly #interchangeable: (cands: Candidate[]) => number;

  constructor(client: Namespace, items: Buffer, book: Buffer, sort: 'Mod' | 'Key', what: string, log: Logger,
    interchangeable: (cands: Candidate[]) => number) {
    this.client = client;
    this.#items = items;
    this.#sort = sort;
    this.what = what;
    this.log = log;
    this.waitersPrefix = Buffer.concat([book, Buffer.from('waiters/')]);
    this.#receipts = Buffer.concat([book, Buffer.from('receipts/')]);
    this.headWatch = { key: items, prefix: true, noDelete: true };
    this.#interchangeable = interchangeable;
  }

  scanOps(): Op[] {
    return [op.range(this.#items, { prefix: true, sortTarget: this.#sort, sortOrder: 'Ascend', limit: WINDOW, keysOnly: true })];
  }

  parseScan(results: OpResult[]): SourceScan {
    const r = results[0];
    if (!r || r.type !== 'range') throw new Error('internal: scan response is not a range');
    return { cands: r.kvs.map((kv) => ({ key: kv.key, rev: kv.modRevision })) };
  }

  fromEvents(events: WatchEvent[]): Candidate[] {
    return events.filter((e) => e.type === 'put').map((e) => ({ key: e.kv.key, rev: e.kv.modRevision }));
  }

  interchangeable(cands: Candidate[]): number {
    return this.#interchangeable(cands);
  }

  /** `__<name>/receipts/<lease hex>-<slot>`: the token of a consumer's last claim. */
  receiptKey(ctx: ClaimContext): Buffer {
    return Buffer.concat([this.#receipts, Buffer.from(`${ctx.session.leaseHex}-${ctx.slot}`)]);
  }

  async claim(c: Candidate, ctx: ClaimContext): Promise<ClaimOutcome<QueueItem>> {
    const receipt = this.receiptKey(ctx);
    const waiterOps = ctx.waiter ? [op.delete(ctx.waiter.key)] : [];
    const scan = ctx.scan;
    const res = await txn(this.client, [cmp.mod(c.key, '==', c.rev)], [
      op.range(c.key),
      op.delete(c.key),
      op.put(receipt, ctx.attemptId, ctx.session.leaseId),
      ...waiterOps,
      ...scan,
    ], [op.range(receipt), ...scan]);
    if (res.succeeded) {
      const kv = rangeAt(res, 0).kvs[0];
      if (!kv) throw new Error(`internal: claimed ${showKey(c.key)} without a value`);
      return { won: true, result: { key: c.key, value: kv.value }, next: res.responses.slice(3 + waiterOps.length) };
    }
    const mine = rangeAt(res, 0).kvs[0];
    if (mine && mine.value.toString() === ctx.attemptId) {
      // An earlier try of this very claim committed and its reply was lost: the item is ours.
      const before = await range(this.client, c.key, { revision: mine.modRevision - 1n });
      const kv = before.kvs[0];
      if (!kv) throw new Error(`${this.what}: claimed ${showKey(c.key)} but cannot read its value at revision ${mine.modRevision - 1n}`);
      this.log('%s: claim of %s committed on an earlier try', this.what, showKey(c.key));
      return { won: true, result: { key: c.key, value: kv.value } };
    }
    return { won: false, scan: res.responses.slice(1) };
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
  readonly #own: OwnSession;
  readonly #line: ConsumerLine<QueueItem>;

  /**
   * @param argument - the name argument's name, for error messages
   * @param interchangeable - how many leading candidates competing consumers may take in any order
   */
  protected constructor(client: Namespace, name: string | Buffer, argument: string, options: QueueOptions, kind: string,
    sort: 'Mod' | 'Key', interchangeable: (items: Buffer) => (cands: Candidate[]) => number, queueLog: Logger) {
    checkClient(client);
    checkName(name, argument);
    checkOptions(options);
    if (options.ttl !== undefined) checkInteger(options.ttl, 'options.ttl', 1, 3600);
    if (options.idleMs !== undefined) checkInteger(options.idleMs, 'options.idleMs', 0);
    this.client = client;
    this.items = childPrefix(name);
    this.what = `${kind} ${showKey(name)}`;
    this.#own = new OwnSession(client, options.ttl ?? 5, options.idleMs ?? 10_000, queueLog);
    const source = new ItemSource(client, this.items, bookPrefix(name), sort, this.what, queueLog, interchangeable(this.items));
    this.#line = new ConsumerLine(source, this.#own);
  }

  /**
   * Removes and returns the next item, waiting while the queue is empty.
   * If the signal aborts while a claim is already in flight and that claim
   * wins, the item is returned rather than dropped.
   * @returns the item's value as a UTF-8 string
   */
  async dequeue(options: DequeueOptions = {}): Promise<string> {
    return (await this.dequeueItem(options)).value.toString();
  }

  /** Like `dequeue()`, returning the item's key and its value as bytes. */
  async dequeueItem(options: DequeueOptions = {}): Promise<QueueItem> {
    checkOptions(options);
    checkSignal(options.signal);
    return this.#line.take(options.signal);
  }

  /** The number of items in the queue now. */
  async size(): Promise<number> {
    const r = await range(this.client, this.items, { prefix: true, countOnly: true });
    return Number(r.count);
  }

  /**
   * Revokes the lease this object uses for its consumers' bookkeeping keys.
   * Items are untouched. Dequeues after `close()` reject.
   */
  close(): Promise<void> {
    return this.#own.close();
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
  /** The queue's name; items live under `<prefix>/`. */
  readonly prefix: string | Buffer;

  /**
   * @param client - an etcd3 client or namespace
   * @param prefix - the queue's name (Go's `keyPrefix`); items live under `<prefix>/`
   * @param options - lease settings of the consumers' bookkeeping
   * @throws InvalidArgumentError for an empty prefix, a non-client or bad options
   */
  constructor(client: Namespace, prefix: string | Buffer, options: QueueOptions = {}) {
    super(client, prefix, 'prefix', options, 'queue', 'Mod', () => (c) => c.length, log);
    this.prefix = prefix;
  }

  /**
   * Appends an item: creates `<prefix>/<19-digit nanoseconds>` (no lease)
   * if absent, retrying with a new name on a collision (Go's `newUniqueKV`).
   * @returns the item's key
   * @throws InvalidArgumentError if `value` is not a string or Buffer
   */
  async enqueue(value: string | Buffer): Promise<string> {
    checkValue(value, 'value');
    const { key } = await createUnique(this.client, () => uniqueKey(this.items),
      toBuffer(value), this.what);
    return key.toString();
  }
}
