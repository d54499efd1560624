import type { Namespace } from 'etcd3';
import { InvalidArgumentError } from '../core/errors.js';
import { childPrefix, joinKey, showKey } from '../core/keys.js';
import { checkInspectArgs, SnapshotReader, type InspectOptions } from './read.js';

/**
 * Which layout a queue uses: {@link Queue} (`<name>/<19 digits>`) or
 * {@link PriorityQueue} (`<name>/<%05d>/<%016d>`).
 */
export type QueueKind = 'queue' | 'priority-queue';

/** Options of {@link inspectQueue}. */
export interface InspectQueueOptions extends Omit<InspectOptions, 'limit'> {
  /** The queue's layout; default: told from the first item's key (a priority queue's is `<%05d>/<%016d>`). */
  kind?: QueueKind;
}

/** The item a queue hands out next. */
export interface QueueHead {
  /** The item's key. */
  readonly key: string;
  /** Its value, as UTF-8. */
  readonly value: string;
  /** Its priority (priority queues only). */
  readonly priority: number | undefined;
  /** The revision it was created at. */
  readonly createRevision: bigint;
  /** The revision it was (last) written at: a queue hands items out in this order. */
  readonly modRevision: bigint;
  /** How many revisions ago it was written (`revision - modRevision`): how long it has waited, in etcd's clock. */
  readonly ageRevisions: bigint;
}

/** What {@link inspectQueue} reports. */
export interface QueueInspection {
  /** The queue's name, as given. */
  readonly name: string;
  /** A FIFO queue or a priority queue. */
  readonly kind: QueueKind;
  /** The store revision the keys were read at. */
  readonly revision: bigint;
  /** Items in the queue. */
  readonly depth: number;
  /** The next item out, or undefined when the queue is empty. */
  readonly head: QueueHead | undefined;
  /** Our consumers waiting for an item (keys under `__<name>/waiters/`; Go consumers do not queue there). */
  readonly waitingConsumers: number;
}

const PRIORITY_ITEM = /^([0-9]{5})\/[0-9]+$/;

/**
 * The depth of a {@link Queue} or {@link PriorityQueue} (Go's `recipe.Queue`
 * and `recipe.PriorityQueue` alike) and its head: the item with the lowest
 * mod revision, or for a priority queue the lowest key (priority, then
 * sequence), with its age in revisions. Read-only.
 * @param name - the queue's name (`new Queue(client, name)`)
 * @throws InvalidArgumentError for a bad client, name, kind or options
 */
export async function inspectQueue(
  client: Namespace,
  name: string | Buffer,
  options: InspectQueueOptions = {},
): Promise<QueueInspection> {
  checkInspectArgs(client, name, options);
  if (options.kind !== undefined && options.kind !== 'queue' && options.kind !== 'priority-queue') {
    throw new InvalidArgumentError(
      'options.kind',
      `must be 'queue', 'priority-queue' or undefined, got ${JSON.stringify(options.kind)}`,
    );
  }
  const reader = new SnapshotReader(client, options.signal);
  const items = childPrefix(name);
  const firstByKey = (await reader.range(items, { prefix: true, sortTarget: 'Key', sortOrder: 'Ascend', limit: 1 }))
    .kvs[0];
  const rest = (kv: { key: Buffer }) => kv.key.subarray(items.length).toString();
  const kind: QueueKind =
    options.kind ?? (firstByKey && PRIORITY_ITEM.test(rest(firstByKey)) ? 'priority-queue' : 'queue');
  const headKv =
    kind === 'priority-queue'
      ? firstByKey
      : (await reader.range(items, { prefix: true, sortTarget: 'Mod', sortOrder: 'Ascend', limit: 1 })).kvs[0];
  const depth = await reader.count(items);
  const waitingConsumers = await reader.count(joinKey('__', name, '/waiters/'));
  const revision = reader.revision;
  const head: QueueHead | undefined = headKv && {
    key: showKey(headKv.key),
    value: headKv.value.toString(),
    priority: kind === 'priority-queue' ? Number(PRIORITY_ITEM.exec(rest(headKv))?.[1] ?? NaN) : undefined,
    createRevision: headKv.createRevision,
    modRevision: headKv.modRevision,
    ageRevisions: revision - headKv.modRevision,
  };
  return { name: showKey(name), kind, revision, depth, head, waitingConsumers };
}
