/** Requests an etcd member has received, by gRPC method, from its own Prometheus counters. */
export interface RequestCounts {
  /** Every method's count (`Range`, `Txn`, `Put`, `DeleteRange`, `Watch`, `LeaseKeepAlive`, ...). */
  readonly byMethod: ReadonlyMap<string, number>;
  /** `Range` requests. */
  readonly range: number;
  /** `Txn` requests. */
  readonly txn: number;
  /** `Put` requests. */
  readonly put: number;
  /** `DeleteRange` requests. */
  readonly deleteRange: number;
  /** KV requests: range + txn + put + deleteRange. */
  readonly kv: number;
  /** Watch stream messages (watch creates and cancels). */
  readonly watch: number;
  /**
   * Watch events the member has sent, to every watcher
   * (`etcd_debugging_mvcc_events_total`; NaN if etcd has no such metric).
   */
  readonly watchEvents: number;
}

/**
 * etcd's count of gRPC messages received (`grpc_server_msg_received_total`),
 * and of watch events sent, at `clientUrl` (e.g. `http://127.0.0.1:2379`),
 * for counting what a piece of code costs: take two snapshots and subtract
 * with {@link requestsBetween}.
 */
export async function requestCounts(clientUrl: string): Promise<RequestCounts> {
  const text = await (await fetch(`${clientUrl.replace(/\/$/, '')}/metrics`)).text();
  const byMethod = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^grpc_server_msg_received_total\{([^}]*)\}\s+([0-9.e+]+)/.exec(line);
    if (!m) continue;
    const method = /grpc_method="([^"]+)"/.exec(m[1]!)?.[1];
    if (method) byMethod.set(method, (byMethod.get(method) ?? 0) + Number(m[2]));
  }
  const events = /^etcd_debugging_mvcc_events_total\s+([0-9.e+]+)/m.exec(text);
  return countsFrom(byMethod, events ? Number(events[1]) : Number.NaN);
}

/** The difference `after - before` of two {@link requestCounts} snapshots. */
export function requestsBetween(before: RequestCounts, after: RequestCounts): RequestCounts {
  const byMethod = new Map<string, number>();
  for (const [k, v] of after.byMethod) byMethod.set(k, v - (before.byMethod.get(k) ?? 0));
  return countsFrom(byMethod, after.watchEvents - before.watchEvents);
}

function countsFrom(byMethod: Map<string, number>, watchEvents: number): RequestCounts {
  const g = (k: string) => byMethod.get(k) ?? 0;
  const range = g('Range');
  const txn = g('Txn');
  const put = g('Put');
  const deleteRange = g('DeleteRange');
  return {
    byMethod,
    range,
    txn,
    put,
    deleteRange,
    kv: range + txn + put + deleteRange,
    watch: g('Watch'),
    watchEvents,
  };
}
