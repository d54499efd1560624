/**
 * Closes a gRPC stream that etcd3 handed us without letting etcd3 react.
 *
 * etcd3 hooks every stream's 'error' event to "markFailed" the host, which
 * closes every gRPC channel of that host (KV, Lease and Watch alike) so that
 * the next call has to build a new channel. Cancelling a stream reports a
 * CANCELLED error, so a plain `cancel()` would trigger that hook: remove the
 * hook first, keep a no-op error listener (grpc still reports the
 * cancellation), then cancel.
 */
export function closeStreamQuietly(stream: { cancel(): void }): void {
  // etcd3 types its streams narrowly; they are grpc-js duplex streams (EventEmitters).
  const emitter = stream as unknown as NodeJS.EventEmitter;
  emitter.removeAllListeners('data');
  emitter.removeAllListeners('end');
  emitter.removeAllListeners('error');
  emitter.on('error', () => undefined);
  try {
    stream.cancel();
  } catch {
    // already closed
  }
}
