import type { Namespace } from 'etcd3';
import { readLine, type InspectedKey, type InspectOptions } from './read.js';

/** A candidate of an election, leader or queued. */
export interface Candidate extends InspectedKey {
  /** Its proposal (the key's value, as UTF-8). */
  readonly value: string;
}

/** What {@link inspectElection} reports. */
export interface ElectionInspection {
  /** The election's name, as given. */
  readonly name: string;
  /** The store revision the keys were read at. */
  readonly revision: bigint;
  /** The leader (the key with the lowest create revision under `<name>/`), or undefined when nobody leads. */
  readonly leader: Candidate | undefined;
  /** The other candidates, next in line first. */
  readonly candidates: Candidate[];
  /** Keys under `<name>/` in all (leader included). */
  readonly total: number;
  /** True if more candidates exist than `options.limit` allowed to list. */
  readonly truncated: boolean;
}

/**
 * The leader and the queued candidates of an {@link Election} (Go's
 * `concurrency.Election`, `etcdctl elect`), with their proposals, leases and
 * the leases' remaining TTLs. Read-only.
 * @param name - the election's name, as given to `new Election(session, name)` or `etcdctl elect <name>`
 * @throws InvalidArgumentError for a bad client, name or options
 */
export async function inspectElection(
  client: Namespace,
  name: string | Buffer,
  options: InspectOptions = {},
): Promise<ElectionInspection> {
  const { id, keys, kvs, total, truncated } = await readLine(client, name, options);
  const all: Candidate[] = keys.map((k, i) => ({ ...k, value: kvs[i]!.value.toString() }));
  return { ...id, leader: all[0], candidates: all.slice(1), total, truncated };
}
