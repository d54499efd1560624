import type { Namespace } from 'etcd3';
import { isCompacted, isFutureRevision, isRefusedTxn } from '../../core/etcd-errors.js';
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
 * "Shared requests"). Client CPU per gRPC call is what limits STM
 * throughput in one process, so one request of a client is in flight at a
 * time, and the reads and commits other transactions issue meanwhile go out
 * together when it is back: reads as one read-only Txn; commits as nested
 * Txns of one Txn, if they touch disjoint keys, with the waiting reads after
 * them. A request that finds the lane idle goes out at once, exactly as it
 * would alone.
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

type Request = ReadRequest | CommitRequest;
type Waiter = Waiting<Request, ReadResult | CommitResult>;
type Of<R extends Request> = Waiting<R, R extends ReadRequest ? ReadResult : CommitResult>;

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
  readonly #batcher = new Batcher<Request, ReadResult | CommitResult>(
    (waiting) => take(waiting, this.#perKey, this.#mayNest),
    (b) => this.#send(b),
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
    return this.#batcher.submit({ kind: 'read', keys, opts, maxOps }) as Promise<ReadResult>;
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
    return this.#batcher.submit(request) as Promise<CommitResult>;
  }

  async #send(batch: Waiter[]): Promise<void> {
    const reads = batch.filter((w): w is Of<ReadRequest> => w.request.kind === 'read');
    const commits = batch.filter((w): w is Of<CommitRequest> => w.request.kind === 'commit');
    if (commits.length === 0) return this.#sendReads(reads);
    if (reads.length === 0) return this.#sendCommits(commits);
    let res: Awaited<ReturnType<typeof nestedTxns>>;
    try {
      res = await nestedTxns(
        this.client,
        commits.map((w) => w.request.parts),
        reads.flatMap((w) => w.request.keys.map((k) => op.range(k, w.request.opts))),
      );
    } catch (err) {
      // Reads are harmless to repeat: each goes alone. Commits refused before anything applied go alone too;
      // after any other error each proves its own outcome, as after any lost reply.
      const alone = reads.map((w) => readAlone(this.client, w.request).then(w.resolve, w.reject));
      if (isRefusedTxn(err) || isCompacted(err) || isFutureRevision(err)) {
        alone.push(...commits.map((w) => this.#sendCommits([w]).catch(w.reject)));
      } else {
        for (const w of commits) w.reject(err);
      }
      return void (await Promise.all(alone));
    }
    for (const [i, w] of commits.entries()) w.resolve({ ...res.results[i]!, revision: res.revision });
    let i = 0;
    for (const w of reads) {
      const kvs = w.request.keys.map(() => {
        const r = res.reads[i++];
        return (r?.type === 'range' ? r.kvs[0] : undefined) ?? null;
      });
      w.resolve(this.#measure({ kvs, revision: res.revision }));
    }
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
 * The first request, and the waiting ones that may share its Txn, first come
 * first served: commits on keys disjoint from all others taken (etcd
 * evaluates every nested Txn's compares before applying any, which is a
 * serial order only for disjoint transactions), reads after them (they see
 * the commits, at the Txn's revision), all within every sender's maxTxnOps
 * (a nested Txn may hold maxTxnOps minus the outer Txn's operations) and, at
 * `perKey` bytes per key read, within SHARED_BYTES. Commits and reads mix only
 * where nesting is allowed.
 */
function take(waiting: Waiter[], perKey: number, mayNest: boolean): Waiter[] {
  const first = waiting[0]!.request;
  if (first.kind === 'commit' && !first.keys) return waiting.splice(0, 1);
  let limit = first.maxOps;
  let commits = 0;
  let nestedOps = 0;
  let readOps = 0;
  let bytes = 0;
  const keys = new Set<string>();
  const taken: Waiter[] = [];
  for (let i = 0; i < waiting.length; i++) {
    const r = waiting[i]!.request;
    const lim = Math.min(limit, r.maxOps);
    let fits: boolean;
    if (r.kind === 'commit') {
      fits =
        r.keys !== undefined &&
        (taken.length === 0 || mayNest) &&
        Math.max(nestedOps, r.ops) <= lim - (commits + 1 + readOps) &&
        bytes + r.bytes + (readOps && readOps * perKey) <= SHARED_BYTES &&
        ![...r.keys].some((k) => keys.has(k));
    } else {
      const n = readOps + r.keys.length;
      fits =
        (commits === 0 || mayNest) &&
        n + commits <= lim &&
        nestedOps <= lim - (commits + n) &&
        (taken.length === 0 || bytes + n * perKey <= SHARED_BYTES);
    }
    if (!fits) {
      if (taken.length === 0) return waiting.splice(0, 1);
      continue;
    }
    if (r.kind === 'commit') {
      for (const k of r.keys!) keys.add(k);
      commits++;
      nestedOps = Math.max(nestedOps, r.ops);
      bytes += r.bytes;
    } else {
      readOps += r.keys.length;
    }
    limit = lim;
    taken.push(...waiting.splice(i--, 1));
  }
  return taken;
}
