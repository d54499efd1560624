import type { Etcd3, Namespace } from 'etcd3';
import { isRecipeError, runSTM, type STMIsolation } from '../src/index.js';
import { requestCounts } from '../src/testing/index.js';

/** etcd's own count of gRPC requests received (Range + Txn + Put + DeleteRange), from /metrics. */
export async function kvRequests(clientUrl: string): Promise<{ range: number; txn: number; total: number }> {
  const c = await requestCounts(clientUrl);
  return { range: c.range, txn: c.txn, total: c.kv };
}

/** A one-shot gate: `open()` lets every `wait()` through. */
export function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { wait, open };
}

/** Puts `count` accounts `<prefix><i>` with `balance` each, in one Txn. */
export async function openAccounts(
  client: Etcd3 | Namespace,
  prefix: string,
  count: number,
  balance: number,
): Promise<string[]> {
  const keys = Array.from({ length: count }, (_, i) => `${prefix}${String(i).padStart(3, '0')}`);
  await client.kv.txn({
    compare: [],
    failure: [],
    success: keys.map((k) => ({ request_put: { key: Buffer.from(k), value: Buffer.from(String(balance)) } })),
  } as never);
  return keys;
}

/** The balances of the accounts under `prefix`, by key. */
export async function balances(client: Etcd3 | Namespace, prefix: string): Promise<Map<string, number>> {
  const all = await client.getAll().prefix(prefix).strings();
  return new Map(Object.entries(all).map(([k, v]) => [k, Number(v)]));
}

/**
 * One bank transfer: moves `amount` from `from` to `to` if `from` has enough.
 * Reads both balances in one round trip. Returns whether money moved.
 */
export function transfer(
  client: Etcd3 | Namespace,
  from: string,
  to: string,
  amount: number,
  isolation: STMIsolation,
  retries = 10,
): Promise<boolean> {
  return runSTM(
    client,
    async (tx) => {
      const [a, b] = await Promise.all([tx.get(from), tx.get(to)]);
      const fromBalance = Number(a);
      if (fromBalance < amount) return false;
      tx.put(from, String(fromBalance - amount));
      tx.put(to, String(Number(b) + amount));
      return true;
    },
    { isolation, retries },
  );
}

/** Random distinct pair of indexes below n. */
export function randomPair(n: number): [number, number] {
  const i = Math.floor(Math.random() * n);
  let j = Math.floor(Math.random() * (n - 1));
  if (j >= i) j++;
  return [i, j];
}

/** True for an STM_CONFLICT error. */
export const isConflict = (err: unknown): boolean => isRecipeError(err, 'STM_CONFLICT');
