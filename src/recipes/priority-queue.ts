import { randomBytes } from 'node:crypto';
import type { Namespace } from 'etcd3';
import { childPrefix, showKey, toBuffer } from '../core/keys.js';
import { cmp, op, range, rangeAt, txn, type KeyValue, type TxnResult } from '../core/kv.js';
import { logger } from '../core/log.js';
import { retrying } from '../core/retry.js';
import { checkInteger, checkValue } from '../core/validate.js';
import type { Candidate } from './queue-line.js';
import { ItemQueue, type QueueOptions } from './queue.js';

const log = logger('priority-queue');

/** The highest priority number (lowest priority) Go's `uint16` allows. */
export const MAX_PRIORITY = 65535;

/** `%05d`, as Go formats a uint16 priority. */
function pad5(n: number): string {
  return n.toString().padStart(5, '0');
}

/** `%016d`, as Go formats a sequence number. */
function pad16(n: bigint): string {
  return n.toString().padStart(16, '0');
}

/**
 * Candidates of the head's priority may be taken in any order by competing
 * consumers; never one of a lower priority first.
 */
function samePriority(items: Buffer): (cands: Candidate[]) => number {
  return (cands) => {
    const head = cands[0]?.key.subarray(items.length, items.length + 6);
    let n = 0;
    while (head && n < cands.length && cands[n]!.key.subarray(items.length, items.length + 6).equals(head)) n++;
    return n;
  };
}

/**
 * A distributed priority queue, wire-compatible with Go's
 * `recipe.PriorityQueue`: an item of priority `p` (0–65535, lower goes
 * first) is the key `<name>/<%05d p>/<%016d sequence>` (no lease) holding the
 * value, and items come out in key order: by priority, then FIFO within a
 * priority. Sequence numbers are allocated as Go does, serialised by the
 * bookkeeping key `__<name>/<%05d p>` (never deleted, no lease).
 *
 * Consumers wait and claim as {@link Queue}'s do: herd-free, each item to
 * exactly one consumer, at most once past `dequeue()`.
 */
export class PriorityQueue extends ItemQueue {
  /** The queue's name (Go's `key`); items live under `<name>/`. */
  readonly name: string | Buffer;
  /** Per priority: the next sequence number and the revision at which we knew it was free. */
  readonly #levels = new Map<number, { next: bigint; seen: bigint }>();

  /**
   * @param client - an etcd3 client or namespace
   * @param name - the queue's name; items live under `<name>/`
   * @param options - lease settings of the consumers' bookkeeping
   * @throws InvalidArgumentError for an empty name, a non-client or bad options
   */
  constructor(client: Namespace, name: string | Buffer, options: QueueOptions = {}) {
    super(client, name, 'name', options, 'priority queue', 'Key', samePriority, log);
    this.name = name;
  }

  /**
   * Adds an item with a priority (Go's `Enqueue(val, pr uint16)`): the key
   * `<name>/<%05d priority>/<%016d next sequence number>`, created in a Txn
   * that also bumps `__<name>/<%05d priority>` and only commits if nobody
   * allocated a number since we read the last one (else we read again).
   * @param priority - 0 (first) to 65535 (last)
   * @returns the item's key
   * @throws InvalidArgumentError for a non-string/Buffer value or a priority out of range
   */
  async enqueue(value: string | Buffer, priority: number): Promise<string> {
    checkValue(value, 'value');
    checkInteger(priority, 'priority', 0, MAX_PRIORITY);
    const val = toBuffer(value);
    const level = Buffer.concat([this.items, Buffer.from(pad5(priority))]);
    const levelPrefix = childPrefix(level);
    const base = Buffer.concat([Buffer.from('__'), level]);
    // Go writes "" here and only compares its mod revision; a unique token
    // lets a retried Txn whose first reply was lost recognise its own commit.
    const token = randomBytes(9).toString('base64url');
    const lastKey = op.range(levelPrefix, { prefix: true, sortTarget: 'Key', sortOrder: 'Descend', limit: 1, keysOnly: true });
    // Go reads the last key before every allocation. After our own allocation we already know it (and the
    // revision at which nobody else had allocated): try the next number at once; the compare catches anyone else.
    let known: { next: bigint; seen: bigint } | undefined = this.#levels.get(priority);
    if (!known) {
      const first = await retrying(() => txn(this.client, [], [lastKey]));
      const last = rangeAt(first, 0).kvs[0];
      known = { next: last ? parseSequence(last.key) + 1n : 0n, seen: first.revision };
    }
    for (let attempt = 0; ; attempt++) {
      const key = Buffer.concat([levelPrefix, Buffer.from(pad16(known.next))]);
      const seen: bigint = known.seen;
      const res: TxnResult = await retrying(() => txn(this.client, [cmp.mod(base, '<', seen + 1n)],
        [op.put(base, token), op.put(key, val)],
        [op.range(base), op.range(key), lastKey]));
      if (res.succeeded) {
        this.#remember(priority, { next: known.next + 1n, seen: res.revision });
        return key.toString();
      }
      const baseKv = rangeAt(res, 0).kvs[0];
      const mine = rangeAt(res, 1).kvs[0];
      if (mine && mine.version === 1n && mine.value.equals(val) && await this.#wroteIt(base, baseKv, mine.createRevision, token)) {
        log('%s: enqueue of %s committed on an earlier try', this.what, showKey(key));
        this.#levels.delete(priority);
        return key.toString();
      }
      const last: KeyValue | undefined = rangeAt(res, 2).kvs[0];
      known = { next: last ? parseSequence(last.key) + 1n : 0n, seen: res.revision };
      if (attempt > 0 && attempt % 100 === 0) log('%s: enqueue still contended after %d tries', this.what, attempt);
    }
  }

  #remember(priority: number, level: { next: bigint; seen: bigint }): void {
    this.#levels.delete(priority);
    this.#levels.set(priority, level);
    if (this.#levels.size > 256) this.#levels.delete(this.#levels.keys().next().value!);
  }

  /** Did the Txn that created our key at `rev` carry our token? */
  async #wroteIt(base: Buffer, baseKv: KeyValue | undefined, rev: bigint, token: string): Promise<boolean> {
    if (baseKv && baseKv.modRevision === rev) return baseKv.value.toString() === token;
    const then = await retrying(() => range(this.client, base, { revision: rev }));
    return then.kvs[0]?.modRevision === rev && then.kvs[0].value.toString() === token;
  }
}

/** Go's `fmt.Sscanf(lastField, "%d")` of the last `/`-separated field. */
function parseSequence(key: Buffer): bigint {
  const s = key.toString();
  const field = s.slice(s.lastIndexOf('/') + 1);
  const m = /^[0-9]+/.exec(field);
  return m ? BigInt(m[0]) : 0n;
}
