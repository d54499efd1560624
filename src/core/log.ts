import createDebug from 'debug';

/** A `debug` logger under `etcd-recipes:<name>` (enable with `DEBUG=etcd-recipes:*`). */
export function logger(name: string): createDebug.Debugger {
  return createDebug(`etcd-recipes:${name}`);
}
