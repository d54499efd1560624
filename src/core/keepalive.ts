import type { Namespace } from 'etcd3';
import { reportFailedStream } from './client.js';
import { logger } from './log.js';
import { hasNoLeader, isStreamEnd, isTransient } from './etcd-errors.js';
import { Backoff } from './retry.js';
import { closeStreamQuietly } from './streams.js';

const log = logger('session');

type KeepAliveStream = Awaited<ReturnType<Namespace['leaseClient']['leaseKeepAlive']>>;

/** What a {@link KeepAlive} tells its session. */
export interface KeepAliveEvents {
  /**
   * A keepalive was acknowledged with `ttl` seconds left (≤ 0: etcd no
   * longer has the lease). `sentAt` is the `performance.now()` time of its
   * send (undefined for an ack we did not count); `resumed` when the stream
   * was re-opened since the last ack.
   */
  ack(ttl: number, sentAt: number | undefined, resumed: boolean): void;
}

/**
 * The keepalive stream of one lease: sends a keepalive every third of the
 * TTL, records each send time (the server renews from when it receives a
 * request, so send time + TTL bounds the new expiry from below), and
 * re-opens the stream, on another member if need be, when it breaks or a
 * keepalive goes unanswered. Stops for good when `signal` aborts.
 */
export class KeepAlive {
  readonly #client: Namespace;
  readonly #leaseId: string;
  readonly #leaseHex: string;
  readonly #ttl: number;
  readonly #signal: AbortSignal;
  readonly #on: KeepAliveEvents;
  #stream: KeepAliveStream | undefined;
  #pendingSends: number[] = [];
  #sendTimer: NodeJS.Timeout | undefined;
  #ackTimer: NodeJS.Timeout | undefined;
  readonly #reconnect = new Backoff(50, 500);
  /** The keepalive stream was re-opened since the last ack. */
  #resumed = false;

  constructor(
    client: Namespace,
    lease: { leaseId: string; leaseHex: string; ttl: number },
    signal: AbortSignal,
    on: KeepAliveEvents,
  ) {
    this.#client = client;
    this.#leaseId = lease.leaseId;
    this.#leaseHex = lease.leaseHex;
    this.#ttl = lease.ttl;
    this.#signal = signal;
    this.#on = on;
  }

  /** Stops sending and closes the stream. */
  stop(): void {
    clearTimeout(this.#sendTimer);
    this.#reconnect.cancel();
    this.#closeStream();
  }

  async connect(): Promise<void> {
    if (this.#signal.aborted) return;
    let stream: KeepAliveStream;
    try {
      stream = await this.#client.leaseClient.leaseKeepAlive();
    } catch (err) {
      this.#scheduleReconnect(err);
      return;
    }
    if (this.#signal.aborted) {
      closeStreamQuietly(stream);
      return;
    }
    this.#stream = stream;
    this.#pendingSends = [];
    stream.on('data', (res: { TTL: string }) => this.#onKeepAlive(stream, res));
    stream.on('error', (err: Error) => this.#onStreamEnd(stream, err));
    stream.on('end', () => this.#onStreamEnd(stream, new Error('keepalive stream ended')));
    this.#send();
  }

  #send(): void {
    clearTimeout(this.#sendTimer);
    const stream = this.#stream;
    if (!stream || this.#signal.aborted) return;
    this.#pendingSends.push(performance.now());
    try {
      stream.write({ ID: this.#leaseId });
    } catch (err) {
      this.#onStreamEnd(stream, err as Error);
      return;
    }
    this.#ackTimer ??= setTimeout(() => this.#onSilent(stream), this.#ackTimeoutMs()).unref();
    this.#sendTimer = setTimeout(() => this.#send(), Math.max(100, (this.#ttl * 1000) / 3)).unref();
  }

  #onKeepAlive(stream: KeepAliveStream, res: { TTL: string }): void {
    if (stream !== this.#stream || this.#signal.aborted) return;
    const sentAt = this.#pendingSends.shift();
    const ttl = Number(res.TTL);
    if (ttl > 0) {
      this.#reconnect.reset();
      clearTimeout(this.#ackTimer);
      this.#ackTimer = this.#pendingSends.length
        ? setTimeout(() => this.#onSilent(stream), this.#ackTimeoutMs()).unref()
        : undefined;
    }
    const resumed = this.#resumed;
    if (sentAt !== undefined) this.#resumed = false;
    this.#on.ack(ttl, sentAt, resumed);
  }

  /**
   * A keepalive went unanswered: the member may be frozen with its connection
   * open. Re-open the stream on another member well before the TTL runs out.
   */
  #ackTimeoutMs(): number {
    return Math.min(2000, Math.max(500, (this.#ttl * 1000) / 4));
  }

  #onSilent(stream: KeepAliveStream): void {
    this.#ackTimer = undefined;
    if (stream !== this.#stream || this.#signal.aborted) return;
    reportFailedStream(stream, 'a keepalive went unanswered');
    this.#onStreamEnd(stream, new Error(`keepalive unanswered for ${this.#ackTimeoutMs()} ms`));
  }

  #onStreamEnd(stream: KeepAliveStream, err: Error): void {
    if (stream !== this.#stream) return;
    this.#closeStream();
    if (this.#signal.aborted) return;
    // Ended by a member cut off from its leader (see requireLeader in core/client.ts): resume elsewhere.
    if (hasNoLeader(err)) reportFailedStream(stream, err.message);
    if (!isTransient(err) && !isStreamEnd(err)) log('keepalive stream error: %s', err.message);
    this.#scheduleReconnect(err);
  }

  #scheduleReconnect(err: unknown): void {
    if (this.#signal.aborted) return;
    clearTimeout(this.#sendTimer);
    this.#resumed = true;
    const backoff = this.#reconnect.schedule(() => void this.connect(), false);
    log('keepalive for %s interrupted (%s); retrying in %d ms', this.#leaseHex, (err as Error)?.message, backoff);
  }

  #closeStream(): void {
    const stream = this.#stream;
    this.#stream = undefined;
    this.#pendingSends = [];
    clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
    if (stream) closeStreamQuietly(stream);
  }
}
