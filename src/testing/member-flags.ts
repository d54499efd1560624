import type { EtcdClusterTls } from './cluster-options.js';

/** What one member of a test cluster is started with. */
export interface MemberFlagsOptions {
  name: string;
  dir: string;
  scheme: 'http' | 'https';
  client: number;
  peer: number;
  /** The peer URL the others dial: the member's own, or its gate's when the cluster is partitionable. */
  advertisedPeer: string;
  initialCluster: string;
  token: string;
  heartbeatMs: number;
  electionMs: number;
  metrics: number | undefined;
  tls: EtcdClusterTls | undefined;
  extraArgs: readonly string[] | undefined;
}

/** The etcd command line of one member of a test cluster (all on 127.0.0.1). */
export function memberFlags(o: MemberFlagsOptions): string[] {
  return [
    '--name',
    o.name,
    '--data-dir',
    o.dir,
    '--listen-client-urls',
    `${o.scheme}://127.0.0.1:${o.client}`,
    '--advertise-client-urls',
    `${o.scheme}://127.0.0.1:${o.client}`,
    '--listen-peer-urls',
    `${o.scheme}://127.0.0.1:${o.peer}`,
    '--initial-advertise-peer-urls',
    o.advertisedPeer,
    '--initial-cluster',
    o.initialCluster,
    '--initial-cluster-state',
    'new',
    '--initial-cluster-token',
    o.token,
    '--heartbeat-interval',
    String(o.heartbeatMs),
    '--election-timeout',
    String(o.electionMs),
    '--logger',
    'zap',
    '--log-outputs',
    'stderr',
    '--log-level',
    'warn',
    ...(o.metrics ? ['--listen-metrics-urls', `http://127.0.0.1:${o.metrics}`] : []),
    ...tlsFlags(o.tls),
    ...(o.extraArgs ?? []),
  ];
}

/** Server and peer certificates; client certificates required when the cluster asks for them. */
function tlsFlags(tls: EtcdClusterTls | undefined): string[] {
  if (!tls) return [];
  return [
    '--cert-file',
    tls.server.certFile,
    '--key-file',
    tls.server.keyFile,
    ...(tls.clientCertAuth ? ['--client-cert-auth', '--trusted-ca-file', tls.ca.certFile] : []),
    '--peer-cert-file',
    tls.server.certFile,
    '--peer-key-file',
    tls.server.keyFile,
    '--peer-client-cert-auth',
    '--peer-trusted-ca-file',
    tls.ca.certFile,
  ];
}
