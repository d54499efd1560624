import { ClientClosedError, type Namespace } from 'etcd3';
import { raceAbort } from './abort.js';
import { clientScope } from './client.js';
import { noteCluster } from './cluster-id.js';
import { ClosedError, InternalError } from './errors.js';
import { classifyEtcdError, txnKey } from './etcd-errors.js';
import { prefixEnd, toBuffer } from './keys.js';
import { retrying } from './retry.js';

/*
 * The one place that builds raw etcd requests. etcd3's builders cannot express
 * what the recipes need (a range with sort, limit and max_create_revision
 * inside a Txn's success branch), so recipes describe operations with these
 * small typed records and this module turns them into gRPC requests. It also
 * applies the client's namespace prefix, because the raw `client.kv` does not.
 */

/** A key-value pair as the recipes see it; revisions are bigint. */
export interface KeyValue {
  /** The key, without the client's namespace prefix. */
  key: Buffer;
  value: Buffer;
  createRevision: bigint;
  modRevision: bigint;
  version: bigint;
  /** Lease ID (decimal string), '0' when none. */
  lease: string;
}

/** Compare one attribute of one key inside a Txn. */
export interface Compare {
  key: string | Buffer;
  target: 'Create' | 'Mod' | 'Version' | 'Value' | 'Lease';
  result: '==' | '!=' | '<' | '>';
  /** Revisions/versions as bigint; values as string or Buffer; lease as decimal string. */
  value: bigint | string | Buffer;
  /** Compare every key starting with `key` (etcd's range_end; true only if it holds for each). */
  prefix?: boolean;
}

/** Options of a range read. */
export interface RangeOptions {
  /** Read every key starting with `key`. */
  prefix?: boolean;
  /** Explicit range end (exclusive); overrides `prefix`. */
  end?: Buffer;
  limit?: number;
  sortTarget?: 'Key' | 'Create' | 'Mod' | 'Version' | 'Value';
  sortOrder?: 'Ascend' | 'Descend';
  maxCreateRevision?: bigint;
  minCreateRevision?: bigint;
  maxModRevision?: bigint;
  minModRevision?: bigint;
  /** Read at this revision (must not be compacted). */
  revision?: bigint;
  /** Member-local read (not linearizable). */
  serializable?: boolean;
  countOnly?: boolean;
  keysOnly?: boolean;
}

/** An operation inside a Txn. */
export type Op =
  | { type: 'range'; key: string | Buffer; options?: RangeOptions }
  | { type: 'put'; key: string | Buffer; value: string | Buffer; lease?: string; prevKv?: boolean }
  | { type: 'delete'; key: string | Buffer; prefix?: boolean; end?: Buffer; prevKv?: boolean };

export interface RangeResult {
  type: 'range';
  revision: bigint;
  kvs: KeyValue[];
  more: boolean;
  count: bigint;
}
interface PutResult {
  type: 'put';
  revision: bigint;
  prevKv?: KeyValue;
}
interface DeleteResult {
  type: 'delete';
  revision: bigint;
  deleted: bigint;
  prevKvs: KeyValue[];
}
export type OpResult = RangeResult | PutResult | DeleteResult;

export interface TxnResult {
  succeeded: boolean;
  /** The store revision after the Txn (the revision of its writes, if any). */
  revision: bigint;
  responses: OpResult[];
}

/** Convenience constructors, so call sites read like Go's clientv3.Op*. */
export const op = {
  range: (key: string | Buffer, options?: RangeOptions): Op => ({ type: 'range', key, options }),
  put: (key: string | Buffer, value: string | Buffer, lease?: string): Op => ({ type: 'put', key, value, lease }),
  delete: (key: string | Buffer): Op => ({ type: 'delete', key }),
  deletePrefix: (key: string | Buffer): Op => ({ type: 'delete', key, prefix: true }),
};

/** A compare constructor for `target`, whose value is a `V`. */
const compare =
  <V extends Compare['value']>(target: Compare['target']) =>
  (key: string | Buffer, result: Compare['result'], value: V): Compare => ({ key, target, result, value });

/** Compare constructors. */
export const cmp = {
  create: compare<bigint>('Create'),
  mod: compare<bigint>('Mod'),
  version: compare<bigint>('Version'),
  value: compare<string | Buffer>('Value'),
};

// ---------------------------------------------------------------------------
// Request encoding. Types are structural copies of etcd3's rpc interfaces, so
// we do not depend on its internal module paths.

type Raw = Record<string, unknown>;
export interface RawKv {
  key: Buffer;
  value: Buffer;
  create_revision: string;
  mod_revision: string;
  version: string;
  lease: string;
}
interface RawHeader {
  revision: string;
}

const resultNames = { '==': 'Equal', '!=': 'NotEqual', '<': 'Less', '>': 'Greater' } as const;
/** The request field each compare target sets. */
export const TARGET_FIELDS = {
  Create: 'create_revision',
  Mod: 'mod_revision',
  Version: 'version',
  Value: 'value',
  Lease: 'lease',
} as const;

/** The key as etcd stores it: with the client's namespace prefix. */
export function encodeKey(client: Namespace, key: string | Buffer): Buffer {
  const k = toBuffer(key);
  return client.prefix.length ? Buffer.concat([client.prefix, k]) : k;
}

function rangeEnd(client: Namespace, key: Buffer, options: { prefix?: boolean; end?: Buffer }): Buffer | undefined {
  if (options.end) return encodeKey(client, options.end);
  if (options.prefix) {
    const full = encodeKey(client, key);
    // An empty key inside a namespace means "the whole namespace".
    return prefixEnd(full);
  }
  return undefined;
}

/**
 * An int64 field as protobufjs takes it most cheaply: a number when exact
 * (Long.fromNumber), else a decimal string (Long.fromString, several times
 * slower; docs/benchmarks.md, "Where the client CPU goes").
 */
const MAX_EXACT = BigInt(Number.MAX_SAFE_INTEGER);
const int64 = (v: bigint): number | string => (v <= MAX_EXACT && v >= -MAX_EXACT ? Number(v) : v.toString());

function encodeCompare(client: Namespace, c: Compare): Raw {
  const v = c.value;
  const encoded = typeof v === 'bigint' ? int64(v) : c.target === 'Value' ? toBuffer(v) : v;
  const req: Raw = {
    key: encodeKey(client, c.key),
    target: c.target,
    result: resultNames[c.result],
    [TARGET_FIELDS[c.target]]: encoded,
  };
  if (c.prefix) req.range_end = rangeEnd(client, toBuffer(c.key), { prefix: true });
  return req;
}

function encodeRange(client: Namespace, key: string | Buffer, o: RangeOptions = {}): Raw {
  const k = toBuffer(key);
  const req: Raw = { key: encodeKey(client, k) };
  const end = rangeEnd(client, k, o);
  if (end) req.range_end = end;
  if (o.limit !== undefined) req.limit = o.limit;
  if (o.sortTarget) req.sort_target = o.sortTarget;
  if (o.sortOrder) req.sort_order = o.sortOrder;
  if (o.maxCreateRevision !== undefined) req.max_create_revision = int64(o.maxCreateRevision);
  if (o.minCreateRevision !== undefined) req.min_create_revision = int64(o.minCreateRevision);
  if (o.maxModRevision !== undefined) req.max_mod_revision = int64(o.maxModRevision);
  if (o.minModRevision !== undefined) req.min_mod_revision = int64(o.minModRevision);
  if (o.revision !== undefined) req.revision = int64(o.revision);
  if (o.serializable) req.serializable = true;
  if (o.countOnly) req.count_only = true;
  if (o.keysOnly) req.keys_only = true;
  return req;
}

function encodeOp(client: Namespace, o: Op): Raw {
  switch (o.type) {
    case 'range':
      return { request_range: encodeRange(client, o.key, o.options) };
    case 'put': {
      const req: Raw = { key: encodeKey(client, o.key), value: toBuffer(o.value) };
      if (o.lease !== undefined && o.lease !== '0') req.lease = o.lease;
      if (o.prevKv) req.prev_kv = true;
      return { request_put: req };
    }
    case 'delete': {
      const k = toBuffer(o.key);
      const req: Raw = { key: encodeKey(client, k) };
      const end = rangeEnd(client, k, o);
      if (end) req.range_end = end;
      if (o.prevKv) req.prev_kv = true;
      return { request_delete_range: req };
    }
  }
}

/** A raw key-value from etcd3, with the namespace prefix removed and revisions as bigint. */
export function decodeKv(client: Namespace, kv: RawKv): KeyValue {
  const p = client.prefix;
  const key = p.length && kv.key.subarray(0, p.length).equals(p) ? kv.key.subarray(p.length) : kv.key;
  return {
    key,
    value: kv.value ?? Buffer.alloc(0),
    createRevision: BigInt(kv.create_revision),
    modRevision: BigInt(kv.mod_revision),
    version: BigInt(kv.version),
    lease: kv.lease ?? '0',
  };
}

function decodeRange(
  client: Namespace,
  r: { header: RawHeader; kvs?: RawKv[]; more?: boolean; count?: string },
): RangeResult {
  return {
    type: 'range',
    revision: BigInt(r.header.revision),
    kvs: (r.kvs ?? []).map((kv) => decodeKv(client, kv)),
    more: !!r.more,
    count: BigInt(r.count ?? '0'),
  };
}

function decodeOpResult(client: Namespace, r: Raw, revision: bigint): OpResult {
  if (r.response_range) return decodeRange(client, r.response_range as never);
  if (r.response_put) {
    const p = r.response_put as { prev_kv?: RawKv };
    return { type: 'put', revision, prevKv: p.prev_kv ? decodeKv(client, p.prev_kv) : undefined };
  }
  const d = (r.response_delete_range ?? {}) as { deleted?: string; prev_kvs?: RawKv[] };
  return {
    type: 'delete',
    revision,
    deleted: BigInt(d.deleted ?? '0'),
    prevKvs: (d.prev_kvs ?? []).map((kv) => decodeKv(client, kv)),
  };
}

/**
 * Sends one call, settling it with a ClosedError as soon as the client is
 * closed (grpc-js lets calls on a closed channel hang), and turning etcd3's
 * errors into the library's where they have a meaning for the caller.
 */
async function send<T>(
  client: Namespace,
  key: string | Buffer | (() => string | Buffer | undefined),
  call: () => Promise<T>,
): Promise<T> {
  const { signal } = clientScope(client);
  signal.throwIfAborted();
  try {
    const res = await raceAbort(call(), signal);
    noteCluster(client, res);
    return res;
  } catch (err) {
    if (err instanceof ClientClosedError) throw new ClosedError('the etcd client was closed', { cause: err });
    throw classifyEtcdError(err, key);
  }
}

/**
 * How long a read is retried on transient errors (a deadline, a member
 * restarting) before its caller sees the error. Reads are harmless to repeat;
 * writes are retried by their recipe, which proves whether they landed.
 */
const READ_RETRY_MS = 30_000;

/** Runs one Txn: `if (compares) then (success) else (failure)`. A read-only Txn is retried like a read. */
export async function txn(
  client: Namespace,
  compares: Compare[],
  success: Op[],
  failure: Op[] = [],
): Promise<TxnResult> {
  if (compares.length === 0 && success.every((o) => o.type === 'range')) {
    return retrying(() => sendTxn(client, compares, success, failure), { maxElapsedMs: READ_RETRY_MS });
  }
  return sendTxn(client, compares, success, failure);
}

function encodeTxn(client: Namespace, compares: Compare[], success: Op[], failure: Op[]): Raw {
  return {
    compare: compares.map((c) => encodeCompare(client, c)),
    success: success.map((o) => encodeOp(client, o)),
    failure: failure.map((o) => encodeOp(client, o)),
  };
}

/** One Txn of a {@link nestedTxns} call. */
export interface TxnParts {
  compares: Compare[];
  success: Op[];
  failure: Op[];
}

/**
 * Sends several Txns as nested Txns of one (etcd ≥ 3.3): one request, one
 * revision, each part judged by its own compares. etcd evaluates every
 * part's compares before applying any part, so the parts must touch disjoint
 * keys; etcd 3.4 before 3.4.26 also skips permission checks inside nested
 * Txns. Not retried: writes prove their own outcome.
 */
export async function nestedTxns(
  client: Namespace,
  parts: TxnParts[],
): Promise<{ revision: bigint; results: { succeeded: boolean; responses: OpResult[] }[] }> {
  const first = parts[0]!;
  const res = await send(
    client,
    () => txnKey(first.compares, first.success),
    () =>
      client.kv.txn({
        compare: [],
        success: parts.map((p) => ({ request_txn: encodeTxn(client, p.compares, p.success, p.failure) })),
        failure: [],
      } as never),
  );
  const revision = BigInt(res.header.revision);
  const results = (res.responses ?? []).map((r) => {
    const t = (r as unknown as { response_txn: { succeeded?: boolean; responses?: Raw[] } }).response_txn;
    return { succeeded: !!t.succeeded, responses: (t.responses ?? []).map((o) => decodeOpResult(client, o, revision)) };
  });
  return { revision, results };
}

async function sendTxn(client: Namespace, compares: Compare[], success: Op[], failure: Op[]): Promise<TxnResult> {
  const res = await send(
    client,
    () => txnKey(compares, success),
    () => client.kv.txn(encodeTxn(client, compares, success, failure) as never),
  );
  const revision = BigInt(res.header.revision);
  return {
    succeeded: res.succeeded,
    revision,
    responses: (res.responses ?? []).map((r) => decodeOpResult(client, r as unknown as Raw, revision)),
  };
}

/** One range read, retried on transient errors. */
export async function range(client: Namespace, key: string | Buffer, options?: RangeOptions): Promise<RangeResult> {
  const res = await retrying(
    () => send(client, key, () => client.kv.range(encodeRange(client, key, options) as never)),
    { maxElapsedMs: READ_RETRY_MS },
  );
  return decodeRange(client, res as never);
}

/** Narrowing helpers for Txn responses. */
export function rangeAt(res: TxnResult | OpResult[], i: number): RangeResult {
  const r = (Array.isArray(res) ? res : res.responses)[i];
  if (r?.type !== 'range') throw new InternalError(`Txn response ${i} is not a range`);
  return r;
}
