import type { Etcd3 } from 'etcd3';
import { createClient } from 'etcd-recipes';
import { EtcdCluster } from 'etcd-recipes/testing';

/**
 * The etcd an example talks to: ETCD_ENDPOINTS (comma-separated host:port)
 * when set, otherwise a throwaway local etcd (installed with apt when missing
 * and running as root), stopped again by `close()`.
 */
export async function exampleEtcd(): Promise<{ endpoints: string[]; client: Etcd3; close(): Promise<void> }> {
  const fromEnv = process.env.ETCD_ENDPOINTS;
  let cluster: EtcdCluster | undefined;
  let endpoints: string[];
  if (fromEnv) {
    endpoints = fromEnv.split(',').map((e) => e.trim().replace(/^https?:\/\//, ''));
  } else {
    cluster = await EtcdCluster.start({ install: true });
    endpoints = cluster.endpoints;
    console.log(`started a throwaway etcd at ${endpoints.join(',')} (set ETCD_ENDPOINTS to use your own)`);
  }
  const client = createClient({ hosts: endpoints });
  return {
    endpoints,
    client,
    async close() {
      client.close();
      await cluster?.stop();
    },
  };
}
