import type { Namespace } from 'etcd3';
import { requestCounts as etcdRequestCounts } from '../src/testing/index.js';
import { waitForKeyCount } from './helpers.js';

/** etcd's own count of KV requests received (Range, Txn, Put, DeleteRange) and watch messages, from /metrics. */
export async function requestCounts(clientUrl: string): Promise<{ txn: number; range: number; put: number; del: number; watch: number }> {
  const c = await etcdRequestCounts(clientUrl);
  return { txn: c.txn, range: c.range, put: c.put, del: c.deleteRange, watch: c.watch };
}

export { waitForPrefixEmpty } from './helpers.js';

/** Resolves once at least `n` keys exist under `prefix` (watch-driven, bounded). */
export function waitForCount(client: Namespace, prefix: string, n: number, timeoutMs = 20_000): Promise<void> {
  return waitForKeyCount(client, prefix, n, timeoutMs);
}

/** Each value with how often it occurs. */
export function tally(values: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const v of values) m.set(v, (m.get(v) ?? 0) + 1);
  return m;
}
