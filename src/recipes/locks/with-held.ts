import type { Namespace } from 'etcd3';
import { linkSignals } from '../../core/abort.js';
import { checkSession, createOwnedSession, type Session } from '../../core/session.js';
import { checkInteger, checkOptions, checkSignal } from '../../core/validate.js';
import type { WithLockOptions } from './mutex.js';

/**
 * The body every `with…` helper (withLock, withLocks) shares: a session for the call (created
 * and closed here unless `options.session` is given), the hold, `run` with
 * a signal that aborts when the hold may be lost or the caller's signal
 * aborts, and the release, whatever happens. Checks `options` first.
 */
export async function withHeld<H extends { readonly signal: AbortSignal; release(): Promise<void> }, T>(
  client: Namespace,
  options: WithLockOptions,
  acquire: (session: Session) => Promise<H>,
  run: (held: H, signal: AbortSignal) => Promise<T> | T,
): Promise<T> {
  checkOptions(options);
  checkSignal(options.signal);
  if (options.session !== undefined) checkSession(options.session, 'options.session');
  else if (options.ttl !== undefined) checkInteger(options.ttl, 'options.ttl', 1);
  const session = options.session ?? (await createOwnedSession(client, { ttl: options.ttl, signal: options.signal }));
  try {
    const held = await acquire(session);
    const linked = linkSignals(held.signal, options.signal);
    try {
      return await run(held, linked.signal);
    } finally {
      linked.dispose();
      await held.release();
    }
  } finally {
    if (!options.session) await session.close();
  }
}
