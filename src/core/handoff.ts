import type { Namespace } from 'etcd3';
import { clusterOf } from './cluster-id.js';
import { encodeKey, op, rangeAt, txn, type Compare, type Op, type TxnResult } from './kv.js';

/*
 * The in-process handoff, for lines where the head holds (Mutex, RWMutex): the release
 * Txn reads the line's new head right after its delete, and when that head is
 * a waiter in this process, it is handed the lock at once, without waiting
 * for its watch event and its post-wake read. Why that read is the same proof
 * the waiter's own read gives, and what makes a hand-over stale:
 * docs/internals.md, "The in-process handoff".
 *
 * Waiters are registered per etcd cluster (the cluster_id of their client's
 * replies) and full key (namespace included), not per client: workers on
 * separate connections to one cluster hand over to each other, two clusters
 * never do.
 */

interface Waiter {
  readonly lease: string;
  readonly createRevision: bigint;
  take(revision: bigint): void;
}

const waiting = new Map<string, Waiter>();
/**
 * How many registered waiters wait on each key (cluster, full key and create
 * revision): a release reads the head only if its key is waited on here.
 */
const blockers = new Map<string, number>();

const waiterId = (cluster: string, fullKey: Buffer): string => `${cluster}\u0000${fullKey.toString('latin1')}`;
const blockerId = (cluster: string, fullKey: Buffer, rev: bigint): string => `${waiterId(cluster, fullKey)}@${rev}`;

/**
 * A waiter's registration: its key (with `createRevision`, on `lease`) may be
 * handed the lock by a local release until {@link HandoffSlot.close}.
 */
export class HandoffSlot {
  /** The revision of the release Txn that handed us the lock, once it did. */
  revision: bigint | undefined;
  /** Resolves when the lock was handed to us; never rejects. */
  readonly taken: Promise<void>;
  readonly #client: Namespace;
  readonly #cluster: string | undefined;
  readonly #id: string | undefined;
  #blocker: string | undefined;
  #waiter: Waiter | undefined;

  /** Registers the waiter `key`@`createRevision` on `lease`. */
  constructor(client: Namespace, key: Buffer, createRevision: bigint, lease: string) {
    let resolve!: () => void;
    this.taken = new Promise<void>((r) => {
      resolve = r;
    });
    this.#client = client;
    const cluster = clusterOf(client);
    this.#cluster = cluster;
    if (cluster === undefined) return;
    const id = waiterId(cluster, encodeKey(client, key));
    // One registration per key: a second one (the same key through another namespace) is not served.
    if (waiting.has(id)) return;
    this.#id = id;
    this.#waiter = {
      lease,
      createRevision,
      take: (revision) => {
        this.revision = revision;
        resolve();
      },
    };
    waiting.set(id, this.#waiter);
  }

  /** Notes the key the waiter now waits on (undefined: none), so that its release reads the head. */
  waitOn(key: Buffer | undefined, createRevision: bigint): void {
    this.#unblock();
    if (!key || !this.#waiter || this.#cluster === undefined) return;
    const blocker = blockerId(this.#cluster, encodeKey(this.#client, key), createRevision);
    this.#blocker = blocker;
    blockers.set(blocker, (blockers.get(blocker) ?? 0) + 1);
  }

  #unblock(): void {
    const blocker = this.#blocker;
    if (blocker === undefined) return;
    this.#blocker = undefined;
    const n = blockers.get(blocker)! - 1;
    if (n > 0) blockers.set(blocker, n);
    else blockers.delete(blocker);
  }

  /**
   * Resolves once the local release Txn of `key`@`createRevision`, if one is
   * in flight, has its reply (and so has handed us the lock, if it did), or
   * after a short bound; at once if none is in flight.
   */
  releaseOf(key: Buffer, createRevision: bigint): Promise<void> {
    const release = this.#cluster && releasing.get(waiterId(this.#cluster, encodeKey(this.#client, key)));
    if (!release || release.createRevision !== createRevision) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, RELEASE_REPLY_WAIT_MS);
      void release.settled.then(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Ends the registration; a later hand-over finds nobody and the waiter's own watch and read decide. */
  close(): void {
    if (this.#id !== undefined && waiting.get(this.#id) === this.#waiter) waiting.delete(this.#id);
    this.#waiter = undefined;
    this.#unblock();
  }
}

interface Release {
  readonly createRevision: bigint;
  readonly settled: Promise<void>;
}

/** Release Txns in flight in this process, by cluster and full key of the key they delete. */
const releasing = new Map<string, Release>();

/**
 * How long a waiter woken by the watch event of a local release waits for
 * that release's reply (and its hand-over) before it reads for itself. The
 * event and the reply leave etcd together; this bounds only a lost or late reply.
 */
const RELEASE_REPLY_WAIT_MS = 100;

/**
 * One attempt of a release Txn: `compares` guard `remove` (the delete of
 * `key`@`createRevision`), and the same Txn reads the head of the line under
 * `line` as the delete left it, if a waiter of this process waits on that
 * key. A head that is such a waiter, with the same cluster, key,
 * create revision and lease, is handed the lock at the Txn's revision, right
 * after `onDeleted` (so the release is told before the next hold). While
 * the attempt is in flight, a local waiter woken by its delete waits for it
 * instead of reading.
 */
export async function releaseAndHandOver(
  client: Namespace,
  key: Buffer,
  createRevision: bigint,
  compares: Compare[],
  remove: Op,
  line: Buffer,
  onDeleted?: () => void,
): Promise<TxnResult> {
  const cluster = clusterOf(client);
  const fullKey = encodeKey(client, key);
  // Nobody in this process waits on this key: the plain guarded delete.
  if (cluster === undefined || !blockers.has(blockerId(cluster, fullKey, createRevision)))
    return txn(client, compares, [remove]);
  const id = waiterId(cluster, fullKey);
  let settle!: () => void;
  const release: Release = { createRevision, settled: new Promise<void>((r) => (settle = r)) };
  releasing.set(id, release);
  try {
    const res = await txn(client, compares, [
      remove,
      op.range(line, { prefix: true, sortTarget: 'Create', sortOrder: 'Ascend', limit: 1, keysOnly: true }),
    ]);
    if (res.succeeded) {
      onDeleted?.();
      handOver(client, res);
    }
    return res;
  } finally {
    if (releasing.get(id) === release) releasing.delete(id);
    settle();
  }
}

function handOver(client: Namespace, res: TxnResult): void {
  const cluster = clusterOf(client);
  const head = rangeAt(res, 1).kvs[0];
  if (cluster === undefined || !head) return;
  const id = waiterId(cluster, encodeKey(client, head.key));
  const waiter = waiting.get(id);
  if (!waiter || waiter.lease !== head.lease || waiter.createRevision !== head.createRevision) return;
  waiting.delete(id);
  waiter.take(res.revision);
}
