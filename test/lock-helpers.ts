import type { Namespace } from 'etcd3';
import { DIAGNOSTICS_CHANNELS, subscribeDiagnostics } from '../src/index.js';
import { subscribe, type FeedSub } from '../src/core/line-feed.js';
import { range } from '../src/core/kv.js';
import { logger } from '../src/core/log.js';
import { lineFeedSpec } from '../src/core/wait.js';

/** Resolves once the lock waiter `key` starts waiting in line (its hand-over registration exists from then on). */
export function waiting(key: string): Promise<void> {
  return new Promise((resolve) => {
    const stop = subscribeDiagnostics(DIAGNOSTICS_CHANNELS.lockWait, (m) => {
      if (m.key !== key) return;
      stop();
      resolve();
    });
  });
}

/**
 * Holds the line feed of Mutex `name` open on `client` (live once this resolves), as a waiter before
 * would have. A reply first tells the client its cluster, which names the feed.
 */
export async function openLineFeed(client: Namespace, name: string): Promise<FeedSub> {
  await range(client, Buffer.from(name), {});
  return subscribe(client, [lineFeedSpec(Buffer.from(`${name}/`))], logger('test'), undefined);
}

/** Resolves with the key of the next waiter of lock `name` that starts waiting in line (keys unique per call). */
export function nextWaiter(name: string): Promise<string> {
  return new Promise((resolve) => {
    const stop = subscribeDiagnostics(DIAGNOSTICS_CHANNELS.lockWait, (m) => {
      if (m.name !== name) return;
      stop();
      resolve(m.key);
    });
  });
}
