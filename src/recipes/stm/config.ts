import type { Namespace } from 'etcd3';
import { checkTransport } from '../../core/client.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { toBuffer } from '../../core/keys.js';
import { checkInteger, checkName, checkNumber, checkOptions, checkSignal } from '../../core/validate.js';
import { type IsolationPolicy, policies } from './isolation.js';
import type { STMIsolation, STMOptions } from './types.js';

/** One runSTM call's settings, checked once and shared by its attempts, reads and commit. */
export interface STMConfig {
  readonly client: Namespace;
  readonly isolation: STMIsolation;
  readonly policy: IsolationPolicy;
  readonly retries: number;
  readonly maxTxnOps: number;
  /** `options.prefetch`, without duplicates. */
  readonly prefetch: readonly Buffer[];
  readonly signal: AbortSignal | undefined;
  readonly backoff: { readonly initialMs: number; readonly maxMs: number };
  /**
   * The client re-sends failed calls unseen (not built by createClient): a
   * commit then carries a receipt that proves whether it landed (commit.ts).
   */
  readonly receipts: boolean;
}

export const idOf = (key: Buffer): string => key.toString('latin1');

/** Checks `options` (throwing `InvalidArgumentError` naming the option) and fills in the defaults. */
export function readConfig(client: Namespace, options: STMOptions): STMConfig {
  checkOptions(options);
  const isolation = options.isolation ?? 'serializable-snapshot';
  if (!Object.hasOwn(policies, isolation)) {
    throw new InvalidArgumentError(
      'options.isolation',
      `must be one of ${Object.keys(policies)
        .map((i) => `'${i}'`)
        .join(', ')}, got ${JSON.stringify(isolation)}`,
    );
  }
  const policy = policies[isolation];
  const { retries = 10, maxTxnOps = 128, signal } = options;
  checkInteger(retries, 'options.retries', 0);
  checkInteger(maxTxnOps, 'options.maxTxnOps', 1);
  checkSignal(signal);
  checkOptions(options.backoff, 'options.backoff');
  const { initialMs = 5, maxMs = 500 } = options.backoff ?? {};
  // setTimeout's limit: longer waits would fire at once.
  checkNumber(initialMs, 'options.backoff.initialMs', 0, 2 ** 31 - 1);
  checkNumber(maxMs, 'options.backoff.maxMs', 0, 2 ** 31 - 1);
  const prefetch = new Map<string, Buffer>();
  if (options.prefetch !== undefined) {
    if (!Array.isArray(options.prefetch)) {
      throw new InvalidArgumentError('options.prefetch', `must be an array of keys, got ${typeof options.prefetch}`);
    }
    options.prefetch.forEach((k: unknown, i) => {
      checkName(k, `options.prefetch[${i}]`);
      const b = toBuffer(k);
      if (!prefetch.has(idOf(b))) prefetch.set(idOf(b), b);
    });
    if (policy.guardReads && prefetch.size > maxTxnOps) {
      throw new InvalidArgumentError(
        'options.prefetch',
        `has ${prefetch.size} keys; a transaction can read at most ${maxTxnOps} ` +
          "(options.maxTxnOps, etcd's --max-txn-ops)",
      );
    }
  }
  return {
    client,
    isolation,
    policy,
    retries,
    maxTxnOps,
    prefetch: [...prefetch.values()],
    signal,
    backoff: { initialMs, maxMs },
    receipts: !checkTransport(client),
  };
}
