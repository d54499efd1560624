import type { ComparatorBuilder, Namespace } from 'etcd3';
import { InvalidArgumentError, LockNotHeldError, NotLeaderError, type RecipeError } from './errors.js';
import { showKey, toBuffer } from './keys.js';
import { op, TARGET_FIELDS, type Compare, type KeyValue, type Op, type OpResult } from './kv.js';
import { processWide } from './shared.js';

/*
 * Fencing for the writes the library makes on a caller's behalf (an enqueue,
 * an ack...): the caller passes the compares that prove it still leads or
 * holds a lock, and the write joins them to its own Txn, so it lands only
 * while they hold. When the Txn fails, the guard's keys read in its failure
 * branch say whether the guard was the reason, with no second round trip
 * (and no race with a change in between).
 */

/**
 * One compare of a guard, as the recipes' own Txns express them: the key
 * (relative to the client's namespace), what is compared, and the value.
 * Revisions and versions are bigint, a lease is its decimal ID.
 */
export interface GuardCompare {
  /** The key compared (as the recipe names it, without the client's namespace). */
  key: string | Buffer;
  /** What of the key is compared: create, mod revision, version, value or lease. */
  target: 'Create' | 'Mod' | 'Version' | 'Value' | 'Lease';
  /** How it is compared. */
  result: '==' | '!=' | '<' | '>';
  /** Revisions and versions as bigint, values as string or Buffer, leases as decimal string. */
  value: bigint | string | Buffer;
}

/**
 * What fences a write: the builder returned by `ifLeader()` / `ifOwner()`
 * (only its compares are used), or a list of compares. A write whose guard
 * does not hold writes nothing and rejects with the guard's code:
 * `NOT_LEADER` for an election's `ifLeader()`, `LOCK_NOT_HELD` for
 * `ifOwner()` and for any other guard.
 */
export type Guard = ComparatorBuilder | readonly GuardCompare[];

type GuardCode = 'NOT_LEADER' | 'LOCK_NOT_HELD';

const marks = () => processWide('guard-marks', () => new WeakMap<object, { code: GuardCode; what: string }>());

/**
 * @internal Tags a builder made by `ifLeader()` / `ifOwner()` with the code a
 * write fenced by it rejects with, and what it fences (for the message).
 */
export function markGuard<B extends ComparatorBuilder>(builder: B, code: GuardCode, what: string): B {
  marks().set(builder, { code, what });
  return builder;
}

/** A guard made ready for one client's Txns. */
export interface ResolvedGuard {
  /** Compares to add to the write's Txn. */
  readonly compares: Compare[];
  /** Reads for the Txn's failure branch, one per compare. */
  readonly reads: Op[];
  /** True when the responses of {@link reads} satisfy every compare. */
  holds(results: OpResult[]): boolean;
  /** The rejection of a write whose guard failed. */
  error(what: string): RecipeError;
}

/** No guard: nothing added, always holds. */
const noGuard: ResolvedGuard = {
  compares: [],
  reads: [],
  holds: () => true,
  error: (what) => new LockNotHeldError(`${what}: guard failed`),
};

const TARGETS = ['Version', 'Create', 'Mod', 'Value', 'Lease'] as const;
/** What a compare's value must be, by target (revisions and versions: the rest). */
const VALUE_RULES: Record<'Value' | 'Lease' | 'revision', [(v: unknown) => boolean, string]> = {
  Value: [(v) => typeof v === 'string' || Buffer.isBuffer(v), 'must be a string or Buffer'],
  Lease: [
    (v) => (typeof v === 'string' && /^[0-9]+$/.test(v)) || typeof v === 'bigint',
    'must be a lease ID (decimal string or bigint)',
  ],
  revision: [(v) => typeof v === 'bigint', 'must be a bigint'],
};
const RESULTS = ['==', '>', '<', '!='] as const;
const RESULT_NAMES: Record<string, GuardCompare['result']> = { Equal: '==', Greater: '>', Less: '<', NotEqual: '!=' };

interface RawCompare {
  key: Buffer;
  target: number | string;
  result: number | string;
  range_end?: unknown;
  [field: string]: unknown;
}

function isBuilder(value: unknown): value is ComparatorBuilder {
  const b = value as { request?: { compare?: unknown }; and?: unknown; commit?: unknown } | null;
  return (
    typeof b === 'object' &&
    b !== null &&
    typeof b.and === 'function' &&
    typeof b.commit === 'function' &&
    Array.isArray(b.request?.compare)
  );
}

/**
 * Throws an InvalidArgumentError unless `value` is undefined or a {@link Guard}. Synchronous: call it
 * with the other checks.
 */
export function checkGuard(value: unknown, argument = 'options.guard'): asserts value is Guard | undefined {
  if (value === undefined || isBuilder(value)) return;
  if (!Array.isArray(value)) {
    throw new InvalidArgumentError(
      argument,
      'must be the builder of ifLeader()/ifOwner() or an array of compares, ' +
        `got ${value === null ? 'null' : typeof value}`,
    );
  }
  for (const [i, c] of (value as unknown[]).entries()) checkCompare(c, `${argument}[${i}]`);
}

function checkCompare(c: unknown, argument: string): asserts c is GuardCompare {
  const o = c as Partial<GuardCompare> | null;
  if (typeof o !== 'object' || o === null)
    throw new InvalidArgumentError(argument, 'must be a compare { key, target, result, value }');
  if (typeof o.key !== 'string' && !Buffer.isBuffer(o.key))
    throw new InvalidArgumentError(`${argument}.key`, 'must be a string or Buffer');
  if (!TARGETS.includes(o.target as never))
    throw new InvalidArgumentError(`${argument}.target`, `must be one of ${TARGETS.join(', ')}`);
  if (!RESULTS.includes(o.result as never))
    throw new InvalidArgumentError(`${argument}.result`, `must be one of ${RESULTS.join(', ')}`);
  const [valid, accepted] = VALUE_RULES[o.target as keyof typeof VALUE_RULES] ?? VALUE_RULES.revision;
  if (!valid(o.value)) throw new InvalidArgumentError(`${argument}.value`, `${accepted} for target ${o.target}`);
}

/**
 * Turns a guard into compares of `client`'s Txns. A builder's compares carry
 * its own client's namespace; they must fall inside `client`'s.
 * @throws InvalidArgumentError for a guard that is not one, or whose keys lie outside `client`'s namespace
 */
export async function resolveGuard(
  client: Namespace,
  guard: Guard | undefined,
  argument = 'options.guard',
): Promise<ResolvedGuard> {
  if (guard === undefined) return noGuard;
  checkGuard(guard, argument);
  let compares: Compare[];
  let mark: { code: GuardCode; what: string } | undefined;
  if (isBuilder(guard)) {
    mark = marks().get(guard);
    const raw = await Promise.all(
      (guard as unknown as { request: { compare: Promise<RawCompare>[] } }).request.compare,
    );
    compares = raw.map((r, i) => fromRaw(client, r, `${argument} (compare ${i})`));
  } else {
    compares = guard.map((c) => ({ ...c, value: c.target === 'Lease' ? String(c.value) : c.value }));
  }
  const reads = compares.map((c) => op.range(c.key));
  return {
    compares,
    reads,
    holds(results) {
      return compares.every((c, i) => {
        const r = results[i];
        return r?.type === 'range' && evaluate(c, r.kvs[0]);
      });
    },
    error(what) {
      const failed = `${what}: not written, its guard failed`;
      if (!mark) return new LockNotHeldError(failed);
      if (mark.code === 'NOT_LEADER') return new NotLeaderError(`${failed}: no longer the leader (${mark.what})`);
      return new LockNotHeldError(`${failed}: the lock is no longer held (${mark.what})`);
    },
  };
}

function fromRaw(client: Namespace, r: RawCompare, argument: string): Compare {
  if (r.range_end !== undefined && toBuffer(r.range_end as Buffer).length)
    throw new InvalidArgumentError(argument, 'range compares are not supported in a guard');
  const target = typeof r.target === 'number' ? TARGETS[r.target] : (r.target as Compare['target']);
  const result =
    typeof r.result === 'number' ? RESULTS[r.result] : (RESULT_NAMES[r.result] ?? (r.result as Compare['result']));
  if (!target || !TARGETS.includes(target) || !result || !RESULTS.includes(result))
    throw new InvalidArgumentError(argument, 'is not a compare etcd3 builds');
  const key = toBuffer(r.key);
  const prefix = client.prefix;
  if (!key.subarray(0, prefix.length).equals(prefix)) {
    throw new InvalidArgumentError(
      argument,
      `compares ${showKey(key)}, outside the namespace of the client that writes`,
    );
  }
  const field = r[TARGET_FIELDS[target]];
  const value =
    target === 'Value'
      ? toBuffer((field ?? Buffer.alloc(0)) as Buffer)
      : target === 'Lease'
        ? String(field ?? '0')
        : BigInt(String(field ?? '0'));
  return { key: key.subarray(prefix.length), target, result, value };
}

/** etcd's own rule for one compare, applied to the key as read (undefined: absent). */
function evaluate(c: Compare, kv: KeyValue | undefined): boolean {
  let order: number;
  if (c.target === 'Value') {
    // etcd fails every value compare on a missing key.
    if (!kv) return false;
    order = Buffer.compare(kv.value, toBuffer(c.value as string | Buffer));
  } else {
    const field = { Create: 'createRevision', Mod: 'modRevision', Version: 'version', Lease: 'lease' } as const;
    const actual = kv ? BigInt(kv[field[c.target]]) : 0n;
    const wanted = BigInt(c.value as bigint | string);
    order = actual < wanted ? -1 : actual > wanted ? 1 : 0;
  }
  return { '==': order === 0, '!=': order !== 0, '<': order < 0, '>': order > 0 }[c.result];
}

/** Options of a write the library makes for a user: a fencing guard and a signal. */
export interface GuardedWriteOptions {
  /**
   * Fencing: the write lands only if these compares hold, in the same Txn
   * (e.g. `election.ifLeader()`). Otherwise nothing is written and the call
   * rejects with the guard's code (`NOT_LEADER`, `LOCK_NOT_HELD`).
   */
  guard?: Guard;
  /**
   * Stop retrying. An attempt already sent is then voided (it can no longer
   * land) and the call rejects with the signal's reason, or it is found to
   * have landed and the call resolves; if etcd cannot be reached to settle
   * that, the call rejects with OUTCOME_UNKNOWN.
   */
  signal?: AbortSignal;
}
