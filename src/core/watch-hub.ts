import type { Namespace } from 'etcd3';
import { abortReason, raceAbort } from './abort.js';
import { clientScope, reportFailedStream } from './client.js';
import { publish } from './diagnostics.js';
import { ClosedError, InternalError } from './errors.js';
import { classifyEtcdError, hasNoLeader, isClientClosed } from './etcd-errors.js';
import { decodeKv, encodeKey, type RawKv } from './kv.js';
import { prefixEnd, showKey } from './keys.js';
import { logger } from './log.js';
import { Backoff } from './retry.js';
import { closeStreamQuietly } from './streams.js';
import {
  WatchCompactedError,
  type WatchEvent,
  type WatchHandle,
  type WatchListener,
  type WatchSpec,
} from './watch-types.js';

const log = logger('watch');

/*
 * One etcd watch stream per client, shared by every watch a recipe opens: client-chosen watch IDs,
 * pipelined creates, resume after the last revision seen on a new stream, WatchCompactedError on
 * compaction, a progress probe after 1 s of silence and a re-open elsewhere after 2 s, ClosedError
 * when the client closes. Why not etcd3's Watcher: docs/internals.md, "Why our own watch stream".
 */

export { WatchCompactedError };
export type { WatchEvent, WatchHandle, WatchListener, WatchSpec };

interface Entry {
  id: string;
  spec: WatchSpec;
  listener: WatchListener;
  /** Revision to resume from after a reconnect. */
  nextRevision: bigint | undefined;
  created: boolean;
  closed: boolean;
  onCreated: ((revision: bigint) => void) | undefined;
  onFailed: ((err: Error) => void) | undefined;
}

interface RawResponse {
  header: { revision: string };
  watch_id: string;
  created: boolean;
  canceled: boolean;
  compact_revision: string;
  cancel_reason: string;
  fragment: boolean;
  events?: { type: 'Put' | 'Delete' | number; kv: RawKv; prev_kv?: RawKv }[];
}
type Stream = Awaited<ReturnType<Namespace['watchClient']['watch']>>;

const hubs = new WeakMap<Namespace, WatchHub>();
/** Silence after which we ask etcd for a progress report on the stream. */
const PROBE_AFTER_MS = 1000;
/** Silence after which the stream counts as dead (a frozen member) and is re-opened elsewhere. */
const SILENT_AFTER_MS = 2000;
/** How long a stream without watches stays open for the next one (see WatchHub's #closeWhenIdle). */
const IDLE_LINGER_MS = 500;

/** The watch hub of `client`. */
function watchHub(client: Namespace): WatchHub {
  let hub = hubs.get(client);
  if (!hub) {
    hub = new WatchHub(client);
    hubs.set(client, hub);
  }
  return hub;
}

/**
 * Opens a watch and resolves once etcd created it. Rejects with the signal's
 * reason (closing the watch) if `signal` aborts first.
 */
export function openWatch(
  client: Namespace,
  spec: WatchSpec,
  listener: WatchListener,
  signal?: AbortSignal,
): Promise<WatchHandle> {
  return watchHub(client).open(spec, listener, signal);
}

class WatchHub {
  readonly #client: Namespace;
  readonly #entries = new Map<string, Entry>();
  #stream: Stream | undefined;
  #connecting = false;
  #nextId = 1n;
  /** Pauses before re-opening a broken stream (not unref'd: a caller is waiting on one of its watches). */
  readonly #reconnect = new Backoff(25, 2000);
  /** Creates sent on the current stream and not yet answered, oldest first. */
  #unanswered: Entry[] = [];
  #idleTimer: NodeJS.Timeout | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  #lastHeard = 0;
  readonly #closed: AbortSignal;

  constructor(client: Namespace) {
    this.#client = client;
    this.#closed = clientScope(client).signal;
    this.#closed.addEventListener('abort', () => this.#shutDown(), { once: true });
  }

  open(spec: WatchSpec, listener: WatchListener, signal?: AbortSignal): Promise<WatchHandle> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    if (this.#closed.aborted) return Promise.reject(abortReason(this.#closed));
    const entry: Entry = {
      id: (this.#nextId++).toString(),
      spec,
      listener,
      nextRevision: spec.startRevision,
      created: false,
      closed: false,
      onCreated: undefined,
      onFailed: undefined,
    };
    const created = new Promise<bigint>((resolve, reject) => {
      entry.onCreated = resolve;
      entry.onFailed = reject;
    });
    this.#entries.set(entry.id, entry);
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (this.#stream) this.#sendCreate(entry);
    else this.#connect();
    const opened = created.then((rev) => ({ createdRevision: rev, close: () => this.#close(entry) }));
    if (!signal) return opened;
    // Registered before raceAbort's own listener: the watch is closed, then the call rejects with the reason.
    const onAbort = () => this.#close(entry);
    signal.addEventListener('abort', onAbort, { once: true });
    return raceAbort(opened, signal).finally(() => signal.removeEventListener('abort', onAbort));
  }

  #close(entry: Entry): void {
    if (entry.closed) return;
    entry.closed = true;
    entry.onFailed?.(new Error('watch closed before it was created'));
    entry.onCreated = entry.onFailed = undefined;
    this.#entries.delete(entry.id);
    if (entry.created && this.#stream) this.#write({ cancel_request: { watch_id: entry.id } });
    if (this.#entries.size === 0) this.#closeWhenIdle();
  }

  /**
   * An open stream keeps the process alive, so it closes once no watch has
   * needed it for IDLE_LINGER_MS. Until then the next watch reuses it: a
   * waiter closes its watch at each handoff and opens the next one a few
   * calls later (its section, release and next acquire), and re-opening a
   * gRPC stream each time cost about as much client CPU as one more call
   * per handoff. Closing the client closes the stream at once.
   */
  #closeWhenIdle(): void {
    this.#idleTimer ??= setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#entries.size > 0) return;
      this.#reconnect.cancel();
      this.#dropStream();
    }, IDLE_LINGER_MS).unref();
  }

  #shutDown(): void {
    this.#reconnect.cancel();
    clearTimeout(this.#idleTimer);
    this.#dropStream();
    for (const entry of [...this.#entries.values()]) this.#end(entry, abortReason(this.#closed) as Error);
  }

  /** Asks a quiet stream for a sign of life; drops one that stayed silent (see the module comment). */
  #probe(stream: Stream): void {
    if (stream !== this.#stream) return;
    const silentFor = performance.now() - this.#lastHeard;
    if (silentFor >= SILENT_AFTER_MS && this.#entries.size > 0) {
      log('watch stream silent for %d ms; re-opening it on another member', Math.round(silentFor));
      reportFailedStream(stream, 'a watch stream went silent');
      this.#onBroken(stream, new Error('watch stream went silent'));
      return;
    }
    if (silentFor >= PROBE_AFTER_MS && this.#entries.size > 0) this.#write({ progress_request: {} });
    this.#probeTimer = setTimeout(() => this.#probe(stream), PROBE_AFTER_MS / 2).unref();
  }

  #connect(): void {
    if (this.#stream || this.#connecting || this.#closed.aborted) return;
    this.#reconnect.cancel();
    this.#connecting = true;
    this.#client.watchClient.watch().then(
      (stream) => {
        this.#connecting = false;
        if (this.#closed.aborted) {
          closeStreamQuietly(stream);
          return;
        }
        this.#stream = stream;
        this.#lastHeard = performance.now();
        stream.on('data', (res: unknown) => this.#onResponse(stream, res as RawResponse));
        stream.on('error', (err: Error) => this.#onBroken(stream, err));
        stream.on('end', () => this.#onBroken(stream, new Error('watch stream ended')));
        clearTimeout(this.#probeTimer);
        this.#probeTimer = setTimeout(() => this.#probe(stream), PROBE_AFTER_MS / 2).unref();
        if (this.#entries.size === 0) this.#closeWhenIdle();
        for (const entry of this.#entries.values()) this.#sendCreate(entry);
      },
      (err: unknown) => {
        this.#connecting = false;
        this.#onBroken(undefined, err as Error);
      },
    );
  }

  #sendCreate(entry: Entry): void {
    const { spec } = entry;
    const key = encodeKey(this.#client, spec.key);
    const req: Record<string, unknown> = { key, watch_id: entry.id };
    if (spec.prefix) req.range_end = prefixEnd(key);
    else if (spec.end) req.range_end = encodeKey(this.#client, spec.end);
    if (entry.nextRevision !== undefined) req.start_revision = entry.nextRevision.toString();
    const filters: string[] = [];
    if (spec.noPut) filters.push('Noput');
    if (spec.noDelete) filters.push('Nodelete');
    if (filters.length) req.filters = filters;
    if (spec.prevKv) req.prev_kv = true;
    entry.created = false;
    this.#unanswered.push(entry);
    this.#write({ create_request: req });
  }

  #write(msg: Record<string, unknown>): void {
    const stream = this.#stream;
    if (!stream) return;
    try {
      stream.write(msg as never);
    } catch (err) {
      this.#onBroken(stream, err as Error);
    }
  }

  #onResponse(stream: Stream, res: RawResponse): void {
    if (stream !== this.#stream) return;
    this.#reconnect.reset();
    this.#lastHeard = performance.now();
    const revision = BigInt(res.header.revision);
    const entry = this.#entries.get(res.watch_id);
    if (res.created) {
      // Creates are answered in the order they were sent. etcd answers with our own watch_id, except
      // when it refuses a watch (auth: watch_id -1): that answer is the oldest unanswered create's.
      const at = this.#unanswered.findIndex((e) => e.id === res.watch_id);
      const answered =
        at >= 0 ? this.#unanswered.splice(at, 1)[0] : res.canceled ? this.#unanswered.shift() : undefined;
      if (!entry && answered && !answered.closed && res.canceled) {
        this.#end(answered, this.#cancelError(res, answered));
        return;
      }
      // A watch closed while its create was in flight is no longer among the entries: cancel it,
      // never revive it.
      if (!entry || entry.closed) {
        // Closed while the create was in flight: cancel it now that it has an ID.
        if (!res.canceled) this.#write({ cancel_request: { watch_id: res.watch_id } });
        return;
      }
      if (res.canceled) {
        this.#end(entry, this.#cancelError(res, entry));
        return;
      }
      entry.created = true;
      // A watch from "now" resumes after its creation revision; one with a start revision keeps it.
      entry.nextRevision ??= revision + 1n;
      const onCreated = entry.onCreated;
      entry.onCreated = entry.onFailed = undefined;
      onCreated?.(revision);
      return;
    }
    if (!entry || entry.closed) return;
    if (res.canceled) {
      this.#end(entry, this.#cancelError(res, entry));
      return;
    }
    const events = (res.events ?? []).map(
      (ev): WatchEvent => ({
        type: ev.type === 'Delete' || ev.type === 1 ? 'delete' : 'put',
        kv: decodeKv(this.#client, ev.kv),
        prevKv: ev.prev_kv ? decodeKv(this.#client, ev.prev_kv) : undefined,
      }),
    );
    if (events.length) {
      const last = events[events.length - 1]!.kv.modRevision;
      if (entry.nextRevision === undefined || last + 1n > entry.nextRevision) entry.nextRevision = last + 1n;
    } else if (!res.fragment && (entry.nextRevision === undefined || revision + 1n > entry.nextRevision)) {
      // A progress notification: nothing up to `revision` is pending for this watch.
      entry.nextRevision = revision + 1n;
    }
    if (events.length === 0) return;
    try {
      entry.listener.onEvents(events, revision);
    } catch (err) {
      // A listener's bug must not break the stream other watches share.
      log('watch listener threw: %s', (err as Error).message);
    }
  }

  #cancelError(res: RawResponse, entry: Entry): Error {
    const compact = BigInt(res.compact_revision || '0');
    if (compact > 0n) {
      publish('watchCompacted', () => ({
        key: showKey(entry.spec.key),
        prefix: !!entry.spec.prefix,
        ...(entry.spec.end && !entry.spec.prefix ? { end: showKey(entry.spec.end) } : {}),
        compactRevision: compact,
      }));
      return new WatchCompactedError(compact);
    }
    // A refused watch (auth) is a PermissionDeniedError naming the key, like any refused call.
    return classifyEtcdError(
      new InternalError(`watch cancelled by etcd${res.cancel_reason ? `: ${res.cancel_reason}` : ''}`),
      entry.spec.key,
    ) as Error;
  }

  #end(entry: Entry, err: Error): void {
    if (entry.closed) return;
    entry.closed = true;
    this.#entries.delete(entry.id);
    if (entry.onFailed) {
      const onFailed = entry.onFailed;
      entry.onCreated = entry.onFailed = undefined;
      onFailed(err);
      return;
    }
    entry.listener.onEnd(err);
  }

  #onBroken(stream: Stream | undefined, err: Error): void {
    if (stream && stream !== this.#stream) return;
    this.#dropStream();
    if (this.#closed.aborted || isClientClosed(err)) {
      // The user closed the client: end every watch, never reconnect.
      const reason = this.#closed.aborted
        ? (abortReason(this.#closed) as Error)
        : new ClosedError(undefined, { cause: err });
      for (const entry of [...this.#entries.values()]) this.#end(entry, reason);
      return;
    }
    if (this.#entries.size === 0) return;
    // Ended by a member cut off from its leader (see requireLeader in core/client.ts): resume elsewhere.
    if (stream && hasNoLeader(err)) reportFailedStream(stream, err.message);
    for (const entry of this.#entries.values()) entry.created = false;
    const delayMs = this.#reconnect.schedule(() => this.#connect(), true);
    for (const entry of [...this.#entries.values()]) entry.listener.onInterrupted?.(err);
    log('watch stream broken (%s); reconnecting in %d ms', err.message, delayMs);
    publish('watchReconnect', () => ({ watches: this.#entries.size, delayMs, error: err }));
  }

  /** Closes the current stream without letting etcd3 reset the client's channels. */
  #dropStream(): void {
    const stream = this.#stream;
    this.#stream = undefined;
    this.#unanswered = [];
    clearTimeout(this.#probeTimer);
    if (stream) closeStreamQuietly(stream);
  }
}
