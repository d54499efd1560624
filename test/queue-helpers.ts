import type { Etcd3, Namespace } from 'etcd3';

/** etcd's own count of KV requests received (Range, Txn, Put, DeleteRange) and watch messages, from /metrics. */
export async function requestCounts(clientUrl: string): Promise<{ txn: number; range: number; put: number; del: number; watch: number }> {
  const text = await (await fetch(`${clientUrl}/metrics`)).text();
  const counts = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^grpc_server_msg_received_total\{([^}]*)\}\s+([0-9.e+]+)/.exec(line);
    if (!m) continue;
    const method = /grpc_method="([^"]+)"/.exec(m[1]!)?.[1];
    if (method) counts.set(method, (counts.get(method) ?? 0) + Number(m[2]));
  }
  const g = (k: string) => counts.get(k) ?? 0;
  return { txn: g('Txn'), range: g('Range'), put: g('Put'), del: g('DeleteRange'), watch: g('Watch') };
}

/** Resolves once no key starts with `prefix` (watch-driven, bounded). */
export async function waitForPrefixEmpty(client: Etcd3 | Namespace, prefix: string, timeoutMs = 30_000): Promise<void> {
  const watcher = await client.watch().prefix(prefix).create();
  try {
    const empty = async () => (await client.getAll().prefix(prefix).count()) === 0;
    if (await empty()) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`keys still under ${prefix} after ${timeoutMs} ms`)), timeoutMs);
      watcher.on('delete', () => {
        void empty().then((yes) => {
          if (yes) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    });
  } finally {
    await watcher.cancel();
  }
}

/** Resolves with `n` once at least `n` keys exist under `prefix` (watch-driven, bounded). */
export async function waitForCount(client: Etcd3 | Namespace, prefix: string, n: number, timeoutMs = 20_000): Promise<void> {
  const watcher = await client.watch().prefix(prefix).create();
  try {
    const enough = async () => (await client.getAll().prefix(prefix).count()) >= n;
    if (await enough()) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`fewer than ${n} keys under ${prefix} after ${timeoutMs} ms`)), timeoutMs);
      watcher.on('put', () => {
        void enough().then((yes) => {
          if (yes) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
    });
  } finally {
    await watcher.cancel();
  }
}

/** Each value with how often it occurs. */
export function tally(values: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const v of values) m.set(v, (m.get(v) ?? 0) + 1);
  return m;
}
