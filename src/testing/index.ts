/**
 * `etcd-recipes/testing`: start a real, throwaway etcd for your own tests.
 * @packageDocumentation
 */
export { EtcdCluster, EtcdMember } from './cluster.js';
export type { EtcdClusterOptions, MemberState } from './cluster.js';
export { findEtcdBinary, findEtcdctlBinary, EtcdNotFoundError } from './etcd-binary.js';
export type { FindEtcdOptions } from './etcd-binary.js';
export { requestCounts, requestsBetween } from './metrics.js';
export type { RequestCounts } from './metrics.js';
export { FaultProxy } from './fault-proxy.js';
export type { FaultMode, FaultProxyStats } from './fault-proxy.js';
export type { EtcdClusterTls, EtcdCredentials, EtcdGrant } from './cluster.js';
export { TestCertificateAuthority, findOpenssl } from './certs.js';
export type { CertificatePair } from './certs.js';
