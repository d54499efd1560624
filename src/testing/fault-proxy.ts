import { connect, createServer, type Server, type Socket } from 'node:net';
import { listenOnLoopback } from './member.js';

/**
 * What a {@link FaultProxy} does with the bytes it carries now.
 * - `forward`: everything passes, both ways.
 * - `cut`: every connection reset, new ones reset at once.
 * - `blackhole`: nothing passes either way; connections stay open.
 * - `dropReplies`: client→server passes, server→client is discarded.
 */
export type FaultMode = 'forward' | 'cut' | 'blackhole' | 'dropReplies';

/** The HTTP/2 client connection preface (RFC 9113 §3.4), which h2c (plaintext gRPC) connections start with. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const H2_FRAME_HEADER = 9;
const H2_HEADERS = 0x1;

/**
 * Finds the client's new HTTP/2 streams in its byte stream, from frame
 * headers alone (no HPACK): a HEADERS frame on an odd stream id above every
 * id seen so far opens a new request (a unary call, or a new watch or
 * keepalive stream). Returns false forever once the bytes are not h2c (TLS):
 * the proxy then cannot tell a request from a ping.
 */
class RequestSpotter {
  #buffered = Buffer.alloc(0);
  #prefaceLeft = H2_PREFACE.length;
  #skip = 0;
  #maxStream = 0;
  #plaintext = true;

  /** True when `h2c` framing was recognised so far. */
  get plaintext(): boolean {
    return this.#plaintext;
  }

  /** Feeds client→server bytes; true if they open at least one new stream. */
  feed(chunk: Buffer): boolean {
    if (!this.#plaintext) return false;
    let data = chunk;
    if (this.#prefaceLeft > 0) {
      const n = Math.min(this.#prefaceLeft, data.length);
      const at = H2_PREFACE.length - this.#prefaceLeft;
      if (!data.subarray(0, n).equals(H2_PREFACE.subarray(at, at + n))) {
        this.#plaintext = false;
        return false;
      }
      this.#prefaceLeft -= n;
      data = data.subarray(n);
    }
    if (this.#skip > 0) {
      const n = Math.min(this.#skip, data.length);
      this.#skip -= n;
      data = data.subarray(n);
    }
    let opened = false;
    let buf = this.#buffered.length ? Buffer.concat([this.#buffered, data]) : data;
    while (this.#skip === 0 && buf.length >= H2_FRAME_HEADER) {
      const length = buf.readUIntBE(0, 3);
      const type = buf[3]!;
      const stream = buf.readUInt32BE(5) & 0x7fffffff;
      if (type === H2_HEADERS && stream % 2 === 1 && stream > this.#maxStream) {
        this.#maxStream = stream;
        opened = true;
      }
      const frame = H2_FRAME_HEADER + length;
      if (buf.length >= frame) {
        buf = buf.subarray(frame);
      } else {
        this.#skip = frame - buf.length;
        buf = Buffer.alloc(0);
      }
    }
    this.#buffered = Buffer.from(buf);
    return opened;
  }
}

/** One proxied TCP connection: the client's socket and ours to the target. */
interface Link {
  readonly client: Socket;
  readonly upstream: Socket;
  readonly spotter: RequestSpotter;
  /** Server→client bytes are discarded for good; the link is reset on restore. */
  silent: boolean;
}

/** Counters of a {@link FaultProxy}, for assertions and diagnostics. */
export interface FaultProxyStats {
  /** Connections accepted since start (including those reset at once while cut). */
  readonly accepted: number;
  /** Connections open now. */
  readonly open: number;
  /** Server→client bytes discarded by `dropReplies` / `dropNextReply`. */
  readonly droppedBytes: number;
}

/**
 * A TCP proxy in front of one etcd endpoint that injects network faults, so
 * code that uses etcd can be tested under them: point a client at
 * {@link FaultProxy.endpoint} instead of the member, then switch modes.
 * It runs in the test's own process and touches only the sockets it
 * accepted. It sees bytes, not gRPC calls; each mode below says exactly what
 * it does at the TCP level. It works for TLS connections too (it never
 * decrypts), except that {@link FaultProxy.dropNextReply} needs plaintext.
 *
 * ```ts
 * import { EtcdCluster, FaultProxy } from 'etcd-recipes/testing';
 * await using etcd = await EtcdCluster.start();
 * const proxy = await FaultProxy.start(etcd.endpoints[0]);
 * const client = etcd.client({ hosts: proxy.endpoint });
 * proxy.dropReplies();   // writes still commit; the client hears nothing
 * ```
 */
export class FaultProxy implements AsyncDisposable {
  /** `127.0.0.1:<port>`: pass it as the client's `hosts`. */
  readonly endpoint: string;
  /** The `host:port` the proxy forwards to. */
  readonly target: string;
  readonly #server: Server;
  readonly #links = new Set<Link>();
  readonly #host: string;
  readonly #port: number;
  #mode: FaultMode = 'forward';
  #armed: ((caught: boolean) => void) | undefined;
  #accepted = 0;
  #droppedBytes = 0;
  #closed = false;

  private constructor(server: Server, endpoint: string, target: string) {
    this.#server = server;
    this.endpoint = endpoint;
    this.target = target;
    const colon = target.lastIndexOf(':');
    this.#host = target.slice(0, colon).replace(/^\[|\]$/g, '');
    this.#port = Number(target.slice(colon + 1));
  }

  /**
   * Starts a proxy to `target` (`host:port`, e.g. an
   * {@link EtcdMember.endpoint}) on a free 127.0.0.1 port, in `forward` mode.
   */
  static async start(target: string): Promise<FaultProxy> {
    const colon = target.lastIndexOf(':');
    const port = Number(target.slice(colon + 1));
    if (colon <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
      throw new RangeError(`target must be "host:port", got ${JSON.stringify(target)}`);
    }
    let proxy: FaultProxy | undefined;
    const server = createServer((socket) => {
      if (proxy) proxy.#accept(socket);
      else socket.resetAndDestroy();
    });
    proxy = new FaultProxy(server, `127.0.0.1:${await listenOnLoopback(server)}`, target);
    return proxy;
  }

  /** The current mode. */
  get mode(): FaultMode {
    return this.#mode;
  }

  /** Counters since start. */
  get stats(): FaultProxyStats {
    return { accepted: this.#accepted, open: this.#links.size, droppedBytes: this.#droppedBytes };
  }

  /**
   * A crashed host or a firewall's reject: every open connection is reset
   * (TCP RST on both sides, so in-flight calls fail at once with a
   * connection error), and every new connection is accepted and reset
   * immediately, until {@link FaultProxy.restore}.
   */
  cut(): void {
    this.#mode = 'cut';
    for (const link of [...this.#links]) this.#reset(link);
  }

  /**
   * A frozen peer (SIGSTOP, a VM pause) or a partition that drops packets:
   * the proxy stops reading from both sockets of every connection, open or
   * new. Nothing is forwarded either way, nothing is closed, and nothing
   * is lost: each side's bytes wait in kernel buffers (the sender's writes
   * succeed until the TCP window fills), exactly as with a stopped process.
   * Only the client's own deadlines or keepalive can end its calls.
   * {@link FaultProxy.restore} resumes and delivers the held bytes in order,
   * like the peer thawing.
   */
  blackhole(): void {
    this.#mode = 'blackhole';
    for (const link of this.#links) {
      link.client.pause();
      link.upstream.pause();
    }
  }

  /**
   * Lost replies: client→server bytes are forwarded, so every request
   * reaches etcd and a write commits; server→client bytes are read and
   * discarded, so the client receives nothing at all on these connections
   * (no response, no HTTP/2 PING or SETTINGS ack) and sees a silent peer.
   * New connections behave the same. A byte stream with a hole cannot be
   * resumed, so {@link FaultProxy.restore} resets every connection that
   * lost a byte, and the client reconnects.
   */
  dropReplies(): void {
    this.#mode = 'dropReplies';
    for (const link of this.#links) {
      link.silent = true;
      link.client.resume();
      link.upstream.resume();
    }
  }

  /**
   * The lost reply of one call. Stays in `forward` mode, armed: the next
   * request the client opens through the proxy (the next new HTTP/2 stream:
   * a unary call such as a Txn, or a newly opened watch or keepalive
   * stream) is forwarded in full, and from that moment its connection goes
   * silent as with {@link FaultProxy.dropReplies}: that reply and every
   * later server→client byte on that connection are discarded. Other and
   * new connections keep forwarding. Call {@link FaultProxy.restore} to
   * reset the silent connection (the client then reconnects) once you have
   * seen what you wanted, e.g. the write's effect through another client.
   *
   * HTTP/2 multiplexes calls, so a single reply cannot be cut out of a
   * connection without breaking it; silencing the connection and resetting
   * it on restore is what a real lost reply followed by a dead connection
   * looks like. Requests are spotted from HTTP/2 frame headers, which
   * requires plaintext (h2c); through TLS the first bytes the client sends
   * trigger it instead (possibly a keepalive ping), so prefer
   * {@link FaultProxy.dropReplies} there.
   *
   * @returns a promise that resolves with true once a request was caught,
   *   or false if the proxy was restored, switched mode or closed first.
   */
  dropNextReply(): Promise<boolean> {
    this.#disarm(false);
    this.restore();
    return new Promise<boolean>((resolve) => {
      this.#armed = resolve;
    });
  }

  /**
   * Back to `forward`: new connections pass normally, blackholed ones
   * resume with their held bytes, and connections that lost server→client
   * bytes are reset (RST) so the client reconnects. Disarms
   * {@link FaultProxy.dropNextReply}.
   */
  restore(): void {
    this.#disarm(false);
    this.#mode = 'forward';
    for (const link of [...this.#links]) {
      if (link.silent) {
        this.#reset(link);
      } else {
        link.client.resume();
        link.upstream.resume();
      }
    }
  }

  /** Resets every connection and stops listening. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#disarm(false);
    this.#mode = 'cut';
    for (const link of [...this.#links]) this.#reset(link);
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** Same as {@link FaultProxy.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #disarm(caught: boolean): void {
    const armed = this.#armed;
    this.#armed = undefined;
    armed?.(caught);
  }

  #reset(link: Link): void {
    this.#links.delete(link);
    link.client.resetAndDestroy();
    link.upstream.resetAndDestroy();
  }

  #accept(client: Socket): void {
    this.#accepted++;
    if (this.#mode === 'cut' || this.#closed) {
      client.on('error', () => undefined);
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(this.#port, this.#host);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const link: Link = { client, upstream, spotter: new RequestSpotter(), silent: this.#mode === 'dropReplies' };
    this.#links.add(link);
    if (this.#mode === 'blackhole') {
      client.pause();
      upstream.pause();
    }
    const drop = () => {
      if (!this.#links.delete(link)) return;
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.on('data', (chunk: Buffer) => {
      const opened = link.spotter.feed(chunk);
      if (this.#armed && (opened || !link.spotter.plaintext)) {
        // The server cannot answer before it has these bytes: silence first, then forward.
        link.silent = true;
        this.#disarm(true);
      }
      this.#pipe(client, upstream, chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (link.silent) {
        this.#droppedBytes += chunk.length;
        return;
      }
      this.#pipe(upstream, client, chunk);
    });
  }

  /** Writes with backpressure: stop reading `from` until `to` drains (unless blackholed meanwhile). */
  #pipe(from: Socket, to: Socket, chunk: Buffer): void {
    if (to.destroyed) return;
    if (!to.write(chunk)) {
      from.pause();
      to.once('drain', () => {
        if (this.#mode !== 'blackhole') from.resume();
      });
    }
  }
}
