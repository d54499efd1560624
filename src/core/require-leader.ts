import type { IOptions } from 'etcd3';

/**
 * The services whose calls require a leader. Not Maintenance: a status or a
 * snapshot of a member without a leader is how one recovers a lost quorum.
 */
export const LEADER_SERVICES = new Set(['KV', 'Watch', 'Lease']);

type CallOptions = Exclude<NonNullable<IOptions['defaultCallOptions']>, (...args: never[]) => unknown>;
type Interceptor = NonNullable<CallOptions['interceptors']>[number];

/**
 * KV, watch and lease calls require a leader (the `hasleader` metadata, Go's
 * `clientv3.WithRequireLeader`). A member cut off from the others by a
 * partition keeps its client connections: it would answer a watch's
 * progress requests, so a watch there would look alive while it misses
 * every change, and keep each call until its deadline. With it, etcd ends
 * such streams, and refuses calls at once (docs/faults.md, "Partitions").
 * The lean KV transport (lean-kv.ts) sends the same metadata when it sees
 * this interceptor.
 */
export const requireLeader: Interceptor = (options, nextCall) => {
  const call = nextCall(options);
  const start = call.start.bind(call);
  call.start = (metadata, listener) => {
    metadata.set('hasleader', 'true');
    start(metadata, listener);
  };
  // grpc-js types the result as its InterceptingCall class but uses only the interface nextCall returns.
  return call as ReturnType<Interceptor>;
};
