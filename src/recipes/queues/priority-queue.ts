import { traced } from '../../core/diagnostics.js';
import type { Namespace } from 'etcd3';
import { resolveGuard } from '../../core/guard.js';
import { joinKey, toBuffer } from '../../core/keys.js';
import { cmp, op, rangeAt, txn, type KeyValue } from '../../core/kv.js';
import { logger } from '../../core/log.js';
import { retrying } from '../../core/retry.js';
import { checkInteger, checkValue } from '../../core/validate.js';
import type { Candidate } from '../../core/claim-source.js';
import { ItemQueue, type EnqueueOptions, type QueueOptions } from './queue.js';

const log = logger('priority-queue');

/** The highest priority number (lowest priority) Go's `uint16` allows. */
export const MAX_PRIORITY = 65535;

/** `%05d`, as Go formats a uint16 priority. */
const pad5 = (n: number): string => n.toString().padStart(5, '0');

/** `%016d`, as Go formats a sequence number. */
const pad16 = (n: bigint): string => n.toString().padStart(16, '0');

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
   * allocated a number since we read the last one (else we read again). The
   * same Txn writes a receipt under `__<name>/sent/`, so a retry after a
   * lost reply neither enqueues twice nor takes a second number.
   * @param priority - 0 (first) to 65535 (last)
   * @param options - `guard` (fencing) and `signal`, as for {@link Queue.enqueue}
   * @returns the item's key
   * @throws InvalidArgumentError for a non-string/Buffer value, a priority out of range or a bad guard
   * @throws NotLeaderError / LockNotHeldError if the guard does not hold (nothing written)
   * @throws OutcomeUnknownError if the signal aborted while etcd was unreachable mid-write
   */
  async enqueue(value: string | Buffer, priority: number, options: EnqueueOptions = {}): Promise<string> {
    checkValue(value, 'value');
    checkInteger(priority, 'priority', 0, MAX_PRIORITY);
    ItemQueue.checkEnqueueOptions(options);
    return traced(
      'enqueue',
      () => ({ recipe: 'priority-queue' as const, name: this.diagName, priority }),
      () => this.#enqueue(value, priority, options),
      (key) => ({ key }),
    );
  }

  async #enqueue(value: string | Buffer, priority: number, options: EnqueueOptions): Promise<string> {
    const { signal } = options;
    const guard = await resolveGuard(this.client, options.guard);
    const val = toBuffer(value);
    const level = joinKey(this.items, pad5(priority));
    const levelPrefix = joinKey(level, '/');
    const base = joinKey('__', level);
    const lastKey = op.range(levelPrefix, {
      prefix: true,
      sortTarget: 'Key',
      sortOrder: 'Descend',
      limit: 1,
      keysOnly: true,
    });
    // Go reads the last key before every allocation. After our own allocation we already know it (and the
    // revision at which nobody else had allocated): try the next number at once; the compare catches anyone else.
    let known: { next: bigint; seen: bigint } | undefined = this.#levels.get(priority);
    if (!known) {
      const first = await retrying(() => txn(this.client, [], [lastKey]), { signals: [signal] });
      const last = rangeAt(first, 0).kvs[0];
      known = { next: last ? parseSequence(last.key) + 1n : 0n, seen: first.revision };
    }
    const what = `${this.what}: enqueue`;
    for (let attempt = 1; ; attempt++) {
      const key = joinKey(levelPrefix, pad16(known.next));
      const out = await this.sent.write(
        {
          compares: [cmp.mod(base, '<', known.seen + 1n), ...guard.compares],
          // Go writes "" to the base key too: only its mod revision matters.
          success: [op.put(base, ''), op.put(key, val)],
          failure: [lastKey, ...guard.reads],
        },
        { signal, what },
      );
      if (out.landed) {
        if (out.res) this.#remember(priority, { next: known.next + 1n, seen: out.res.revision });
        else this.#levels.delete(priority);
        return key.toString();
      }
      const [lastRead, ...reads] = out.failure;
      if (!guard.holds(reads)) throw guard.error(what);
      const last: KeyValue | undefined = lastRead?.type === 'range' ? lastRead.kvs[0] : undefined;
      known = { next: last ? parseSequence(last.key) + 1n : 0n, seen: lastRead?.revision ?? known.seen };
      if (attempt % 100 === 0) log('%s: enqueue still contended after %d tries', this.what, attempt);
    }
  }

  #remember(priority: number, level: { next: bigint; seen: bigint }): void {
    this.#levels.delete(priority);
    this.#levels.set(priority, level);
    if (this.#levels.size > 256) this.#levels.delete(this.#levels.keys().next().value!);
  }
}

/** Go's `fmt.Sscanf(lastField, "%d")` of the last `/`-separated field. */
function parseSequence(key: Buffer): bigint {
  const s = key.toString();
  const field = s.slice(s.lastIndexOf('/') + 1);
  const m = /^[0-9]+/.exec(field);
  return m ? BigInt(m[0]) : 0n;
}
