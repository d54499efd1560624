import type { Namespace } from 'etcd3';
import { requestCounts as etcdRequestCounts } from '../src/testing/index.js';
import { waitForKeyCount, within } from './helpers.js';

/** etcd's own count of KV requests received (Range, Txn, Put, DeleteRange) and watch messages, from /metrics. */
export async function requestCounts(
  clientUrl: string,
): Promise<{ txn: number; range: number; put: number; del: number; watch: number }> {
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

/** The parts of a raw Txn request the fault tests look at. */
export interface RawTxn {
  success?: Record<string, { key?: Buffer; lease?: unknown } | undefined>[];
}

/** A Txn whose success branch puts (or deletes) a key under `prefix`. */
export const putsUnder =
  (prefix: string) =>
  (req: RawTxn): boolean =>
    !!req.success?.some((op) => op.request_put?.key?.toString().startsWith(prefix));
export const deletesUnder =
  (prefix: string) =>
  (req: RawTxn): boolean =>
    !!req.success?.some((op) => op.request_delete_range?.key?.toString().startsWith(prefix));

/**
 * Runs `before` just before the client sends its next `times` Txns that
 * match (e.g. to switch a proxy to dropping replies exactly for that
 * request), and counts the Txns the code under test sends (etcd3's own
 * silent re-sends happen below this hook and are not counted).
 */
export function beforeTxn(
  client: Namespace,
  match: (req: RawTxn) => boolean,
  before: (req: RawTxn) => void | Promise<void>,
  times = 1,
): { readonly hits: number; readonly calls: number } {
  const kv = client.kv as unknown as { txn: (req: unknown, options?: unknown) => Promise<unknown> };
  const real = kv.txn.bind(kv);
  const state = { hits: 0, calls: 0 };
  kv.txn = async (req: unknown, options?: unknown) => {
    state.calls++;
    if (state.hits < times && match(req as RawTxn)) {
      state.hits++;
      await before(req as RawTxn);
    }
    return real(req, options);
  };
  return state;
}

/** Resolves once a Txn of `client` that `match` selects has come back (after etcd applied it). */
export function afterTxn(client: Namespace, match: (req: RawTxn) => boolean): Promise<void> {
  const kv = client.kv as unknown as { txn: (req: unknown, options?: unknown) => Promise<unknown> };
  const real = kv.txn.bind(kv);
  return new Promise<void>((resolve) => {
    kv.txn = async (req: unknown, options?: unknown) => {
      const res = await real(req, options);
      if (match(req as RawTxn)) resolve();
      return res;
    };
  });
}

/** Moves the store on and compacts its whole history up to now (physically). */
export async function compactAll(client: Namespace, filler: string): Promise<bigint> {
  for (let i = 0; i < 5; i++) await client.put(`${filler}/${i}`).value('x');
  const rev = BigInt((await client.get(`${filler}/0`).exec()).header.revision);
  await client.kv.compact({ revision: rev.toString(), physical: true });
  await client.delete().prefix(`${filler}/`);
  return rev;
}

/** The length of an injected fault (an outage), not a wait for an event. */
export function faultFor(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Values collected (taken, acked), with a bounded, event-driven wait for one of them. */
export class Collected {
  readonly values: string[] = [];
  #wake: (() => void) | undefined;

  push(v: string): void {
    this.values.push(v);
    this.#wake?.();
  }

  async until(check: (values: string[]) => boolean, what: string, ms = 20_000): Promise<void> {
    await within(
      ms,
      (async () => {
        while (!check(this.values))
          await new Promise<void>((r) => {
            this.#wake = r;
          });
      })(),
      what,
    );
  }
}
