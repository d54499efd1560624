import http2, { type ClientHttp2Session, type SecureClientSessionOptions } from 'node:http2';
import { logger } from './log.js';

const log = logger('lean-kv');

/** How a member's connection is made and watched: grpc-js's meaning of each setting. */
export interface MemberConnectionOptions {
  /** CA, client certificate and key, and the server name to check (grpc-js's `ssl_target_name_override`). */
  tls?: { ca?: Buffer; key?: Buffer; cert?: Buffer; servername?: string };
  /** While calls are in flight, a ping this often (grpc-js's `keepalive_time_ms`; default 10 s)... */
  keepaliveMs?: number;
  /** ...unanswered this long ends the connection (`keepalive_timeout_ms`; default 3 s). */
  keepaliveTimeoutMs?: number;
}

/**
 * The one HTTP/2 connection of the lean KV transport to one member, kept as
 * grpc-js keeps its subchannel: across etcd3's resets of the member's
 * services, made again only once it ended, failed, or went silent (a ping
 * unanswered while calls are in flight). Keeping it matters for more than
 * speed: calls sent on one connection reach etcd in the order they were
 * sent, so a cleanup sent after a write that timed out lands after that
 * write, however late the network delivers it (docs/internals.md, "The KV
 * transport").
 */
export class MemberConnection {
  readonly authority: string;
  readonly #connectOptions: SecureClientSessionOptions;
  readonly #keepaliveMs: number;
  readonly #keepaliveTimeoutMs: number;
  #session: ClientHttp2Session | undefined;
  /** Calls in flight per session: one with calls keeps the process alive, as grpc-js's does; an idle one not. */
  readonly #active = new WeakMap<ClientHttp2Session, number>();
  readonly #pinging = new WeakSet<ClientHttp2Session>();
  #closed = false;

  constructor(host: string, options: MemberConnectionOptions) {
    this.authority = `${options.tls ? 'https' : 'http'}://${host}`;
    this.#connectOptions = options.tls ? { ...options.tls } : {};
    this.#keepaliveMs = options.keepaliveMs ?? 10_000;
    this.#keepaliveTimeoutMs = options.keepaliveTimeoutMs ?? 3000;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Ends the connection gracefully (calls in flight finish) when the client closes. */
  close(): void {
    this.#closed = true;
    this.#session?.close();
    this.#session = undefined;
  }

  /** The live session, made on first use and again after the last one ended. Throws once closed. */
  session(): ClientHttp2Session {
    if (this.#closed) throw new Error('the client is closed');
    const current = this.#session;
    if (current && !current.closed && !current.destroyed) return current;
    const session = http2.connect(this.authority, this.#connectOptions);
    const forget = () => {
      if (this.#session === session) this.#session = undefined;
    };
    // A connection error reaches every call on it as a stream error; the session's own copy is only logged.
    session.on('error', (err) => log('connection to %s failed: %s', this.authority, err.message));
    session.on('goaway', forget);
    session.on('close', forget);
    session.unref();
    this.#session = session;
    return session;
  }

  /** A call started on `session`. */
  started(session: ClientHttp2Session): void {
    const active = this.#active.get(session) ?? 0;
    this.#active.set(session, active + 1);
    if (active > 0) return;
    session.ref();
    this.#keepAlive(session);
  }

  /** A call on `session` ended. */
  ended(session: ClientHttp2Session): void {
    const active = (this.#active.get(session) ?? 1) - 1;
    this.#active.set(session, active);
    if (active === 0 && !session.destroyed) session.unref();
  }

  /** While `session` has calls in flight: a ping every keepaliveMs; one unanswered in time ends the session. */
  #keepAlive(session: ClientHttp2Session): void {
    if (this.#pinging.has(session)) return;
    this.#pinging.add(session);
    const next = () => {
      if (session.destroyed || session.closed || !this.#active.get(session)) {
        this.#pinging.delete(session);
        return;
      }
      const deadline = setTimeout(() => {
        log('connection to %s answered no ping in %d ms: ending it', this.authority, this.#keepaliveTimeoutMs);
        session.destroy();
      }, this.#keepaliveTimeoutMs);
      deadline.unref();
      let sent = false;
      try {
        sent = session.ping(() => {
          clearTimeout(deadline);
          schedule();
        });
      } catch {
        // Ended between the check and the ping: nothing to watch any more.
      }
      if (!sent) {
        clearTimeout(deadline);
        schedule();
      }
    };
    const schedule = () => setTimeout(next, this.#keepaliveMs).unref();
    schedule();
  }
}
