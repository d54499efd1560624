import type { Namespace } from 'etcd3';

/*
 * Which etcd cluster answers a client: the cluster_id every reply's header
 * carries. The in-process handoff (core/handoff.ts) matches waiters and
 * releases by it, so that two clusters in one process never hand over.
 */

/** Per client: the cluster_id of its replies, or '' once two different clusters answered it. */
const clusters = new WeakMap<Namespace, string>();

/** Notes the cluster of one reply `res` (any etcd response with a header) to a call made on `client`. */
export function noteCluster(client: Namespace, res: unknown): void {
  const id = (res as { header?: { cluster_id?: string } } | undefined)?.header?.cluster_id;
  if (id && clusters.get(client) !== id) clusters.set(client, clusters.has(client) ? '' : id);
}

/**
 * The cluster_id of the etcd cluster that answers `client`; undefined before
 * its first reply through core/kv.ts, or once replies came from two clusters.
 */
export function clusterOf(client: Namespace): string | undefined {
  return clusters.get(client) || undefined;
}
