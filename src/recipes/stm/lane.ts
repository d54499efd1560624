import type { Namespace } from 'etcd3';
import { isRefusedTxn } from '../../core/etcd-errors.js';
import { toBuffer } from '../../core/keys.js';
import {
  type KeyValue,
  nestedTxns,
  type OpResult,
  op,
  type RangeOptions,
  range,
  rangeAt,
  type TxnParts,
  txn,
} from '../../core/kv.js';

/*
 * Requests that concurrent transactions on one client share (docs/stm.md,
 * "Shared requests"). Client CPU per gRPC call limits STM throughput in one
 * process, so a client has at most one read and one commit in flight, and
 * those issued meanwhile go out together when it is back: reads as one
 * read-only Txn; commits as nested Txns of one Txn, if they touch disjoint
 * keys. Reads never wait for a commit's disk write. A request that finds its
 * lane idle goes out at once, exactly as it would alone.
 */

export interface ReadResult {
  kvs: (KeyValue | null)[];
  revision: bigint;
}

export interface CommitResult {
  succeeded: boolean;
  revision: bigint;
  responses: OpResult[];
}

interface Waiting<R, T> {
  readonly request: R;
  resolve(value: T): void;
  reject(err: unknown): void;
}

interface ReadRequest {
  readonly kind: 'read';
  readonly keys: Buffer[];
  readonly opts: RangeOptions;
  readonly maxOps: number;
}

interface CommitRequest {
  readonly kind: 'commit';
  readonly parts: TxnParts;
  /** The keys it reads and writes, when it may share a Txn with others. */
  readonly keys: ReadonlySet<string> | undefined;
  /** Operations in its largest branch. */
  readonly ops: number;
  readonly maxOps: number;
  /** About how large its request is. */
  readonly bytes: number;
}

type Of<R extends ReadRequest | CommitRequest> = Waiting<R, R extends ReadRequest ? ReadResult : CommitResult>;

/**
 * A shared request or response stays under this size, far from etcd's request
 * limit (1.5 MiB) and grpc-js's response limit (4 MiB): a request too large
 * only because it was shared would fail, and etcd3 counts that failure
 * towards opening its circuit breaker.
 */
const SHARED_BYTES = 1024 * 1024;

/** One request in flight; the requests that arrive meanwhile go out together when it is back. */
class Batcher<R, T> {
  #waiting: Waiting<R, T>[] = [];
  #busy = false;

  constructor(
    /** Removes from `waiting` the requests to send together (at least the first). */
    private readonly take: (waiting: Waiting<R, T>[]) => Waiting<R, T>[],
    /** Sends them and settles each. */
    private readonly send: (batch: Waiting<R, T>[]) => Promise<void>,
  ) {}

  submit(request: R): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#waiting.push({ request, resolve, reject });
      // Sent after the current synchronous run, so that requests issued together travel together.
      if (this.#waiting.length === 1 && !this.#busy) queueMicrotask(() => this.#next());
    });
  }

  async #next(): Promise<void> {
    if (this.#busy || this.#waiting.length === 0) return;
    this.#busy = true;
    const batch = this.take(this.#waiting);
    try {
      await this.send(batch);
    } catch (err) {
      for (const w of batch) w.reject(err);
    } finally {
      this.#busy = false;
      void this.#next();
    }
  }
}

const lanes = new WeakMap<Namespace, Lane>();

/** The shared reads and commits of one client (namespace) object. */
export class Lane {
  readonly #reads = new Batcher<ReadRequest, ReadResult>(
    (waiting) => takeReads(waiting, this.#perKey),
    (b) => this.#sendReads(b),
  );
  readonly #commits = new Batcher<CommitRequest, CommitResult>(
    (waiting) => takeCommits(waiting, this.#mayNest),
    (b) => this.#sendCommits(b),
  );
  /** etcd 3.4 before 3.4.26 skips permission checks inside nested Txns: never nest for an authenticated client. */
  readonly #mayNest: boolean;
  /**
   * Twice the largest key-value read so far (at least 16 KiB), to size a shared read before its values are
   * known; reads are not shared before the first one is back.
   */
  #perKey = Number.POSITIVE_INFINITY;

  private constructor(readonly client: Namespace) {
    const { options } = client as unknown as { options?: { auth?: unknown; credentials?: unknown } };
    this.#mayNest = options?.auth === undefined && options?.credentials === undefined;
  }

  static of(client: Namespace): Lane {
    const lane = lanes.get(client) ?? new Lane(client);
    lanes.set(client, lane);
    return lane;
  }

  /** Reads `keys` (at most `maxOps`) with `opts`, possibly in one Txn with other transactions' requests. */
  read(keys: Buffer[], opts: RangeOptions, maxOps: number): Promise<ReadResult> {
    return this.#reads.submit({ kind: 'read', keys, opts, maxOps });
  }

  /**
   * Sends a commit Txn, possibly nested in one Txn with other transactions'
   * commits and reads. `keys` (every key it reads or writes) allows that;
   * without it, it goes alone.
   */
  commit(parts: TxnParts, keys: ReadonlySet<string> | undefined, maxOps: number): Promise<CommitResult> {
    const ops = Math.max(parts.compares.length, parts.success.length, parts.failure.length);
    const bytes = [...parts.success, ...parts.failure, ...parts.compares].reduce(
      (n, o) => n + 16 + toBuffer(o.key).length + ('value' in o && typeof o.value !== 'bigint' ? o.value.length : 0),
      0,
    );
    const request: CommitRequest = {
      kind: 'commit',
      parts,
      keys: this.#mayNest ? keys : undefined,
      ops,
      maxOps,
      bytes,
    };
    return this.#commits.submit(request);
  }

  async #sendReads(batch: Of<ReadRequest>[]): Promise<void> {
    if (batch.length === 1) {
      const { request, resolve } = batch[0]!;
      return resolve(this.#measure(await readAlone(this.client, request)));
    }
    let res: Awaited<ReturnType<typeof txn>>;
    try {
      res = await txn(
        this.client,
        [],
        batch.flatMap((w) => w.request.keys.map((k) => op.range(k, w.request.opts))),
      );
    } catch {
      // One request's error (a compacted revision, say) must not fail the others: each goes alone.
      const alone = (w: (typeof batch)[number]) => readAlone(this.client, w.request).then(w.resolve, w.reject);
      return void (await Promise.all(batch.map(alone)));
    }
    let i = 0;
    for (const w of batch) {
      const kvs = w.request.keys.map(() => rangeAt(res, i++).kvs[0] ?? null);
      w.resolve(this.#measure({ kvs, revision: res.revision }));
    }
  }

  #measure(read: ReadResult): ReadResult {
    const largest = Math.max(8 * 1024, ...read.kvs.map((kv) => (kv ? kv.key.length + kv.value.length : 0)));
    this.#perKey = this.#perKey === Number.POSITIVE_INFINITY ? 2 * largest : Math.max(this.#perKey, 2 * largest);
    return read;
  }

  async #sendCommits(batch: Of<CommitRequest>[]): Promise<void> {
    if (batch.length === 1) {
      const { request, resolve } = batch[0]!;
      const { compares, success, failure } = request.parts;
      return resolve(await txn(this.client, compares, success, failure));
    }
    let res: Awaited<ReturnType<typeof nestedTxns>>;
    try {
      res = await nestedTxns(
        this.client,
        batch.map((w) => w.request.parts),
      );
    } catch (err) {
      // Refused before it applied (a part's key is forbidden): each goes alone.
      // Anything else may have applied: each part proves its own outcome, as after any lost reply.
      if (!isRefusedTxn(err)) throw err;
      return void (await Promise.all(batch.map((w) => this.#sendCommits([w]).catch(w.reject))));
    }
    for (const [i, w] of batch.entries()) w.resolve({ ...res.results[i]!, revision: res.revision });
  }
}

function readAlone(client: Namespace, { keys, opts }: ReadRequest): Promise<ReadResult> {
  if (keys.length === 1)
    return range(client, keys[0]!, opts).then((r) => ({ kvs: [r.kvs[0] ?? null], revision: r.revision }));
  const ops = keys.map((k) => op.range(k, opts));
  return txn(client, [], ops).then((res) => ({
    kvs: keys.map((_, i) => rangeAt(res, i).kvs[0] ?? null),
    revision: res.revision,
  }));
}

/**
 * The first read and the waiting ones that fit one Txn with it: within every
 * sender's maxTxnOps and, at `perKey` bytes per key, within SHARED_BYTES.
 */
function takeReads(waiting: Of<ReadRequest>[], perKey: number): Of<ReadRequest>[] {
  let limit = Number.POSITIVE_INFINITY;
  let ops = 0;
  const taken: Of<ReadRequest>[] = [];
  for (let i = 0; i < waiting.length; i++) {
    const r = waiting[i]!.request;
    const lim = Math.min(limit, r.maxOps);
    const n = ops + r.keys.length;
    if (taken.length > 0 && (n > lim || n * perKey > SHARED_BYTES)) continue;
    ops = n;
    limit = lim;
    taken.push(...waiting.splice(i--, 1));
  }
  return taken;
}

/**
 * The first commit and the waiting ones that may share its Txn, first come
 * first served: commits on keys disjoint from all others taken (etcd
 * evaluates every nested Txn's compares before applying any, which is a
 * serial order only for disjoint transactions), within every sender's
 * maxTxnOps (a nested Txn may hold maxTxnOps minus the outer Txn's
 * operations) and within SHARED_BYTES. Only where nesting is allowed.
 */
function takeCommits(waiting: Of<CommitRequest>[], mayNest: boolean): Of<CommitRequest>[] {
  const first = waiting[0]!.request;
  if (!first.keys || !mayNest) return waiting.splice(0, 1);
  let limit = first.maxOps;
  let nestedOps = 0;
  let bytes = 0;
  const keys = new Set<string>();
  const taken: Of<CommitRequest>[] = [];
  for (let i = 0; i < waiting.length; i++) {
    const r = waiting[i]!.request;
    const lim = Math.min(limit, r.maxOps);
    const fits =
      r.keys !== undefined &&
      Math.max(nestedOps, r.ops) <= lim - (taken.length + 1) &&
      bytes + r.bytes <= SHARED_BYTES &&
      ![...r.keys].some((k) => keys.has(k));
    if (!fits) {
      if (taken.length === 0) return waiting.splice(0, 1);
      continue;
    }
    for (const k of r.keys!) keys.add(k);
    nestedOps = Math.max(nestedOps, r.ops);
    bytes += r.bytes;
    limit = lim;
    taken.push(...waiting.splice(i--, 1));
  }
  return taken;
}
