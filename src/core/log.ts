import createDebug from 'debug';

/**
 * A printf-style log function that also says whether it is enabled. Our own
 * type rather than `debug`'s, so the shipped declarations need no
 * `@types/debug`.
 */
export interface Logger {
  (formatter: string, ...args: unknown[]): void;
  readonly enabled: boolean;
}

/** A `debug` logger under `etcd-recipes:<name>` (enable with `DEBUG=etcd-recipes:*`). */
export function logger(name: string): Logger {
  return createDebug(`etcd-recipes:${name}`);
}
