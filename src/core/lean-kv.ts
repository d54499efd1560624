import type { IOptions } from 'etcd3';
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type OutgoingHttpHeaders } from 'node:http2';
import { MemberConnection, type MemberConnectionOptions } from './member-connection.js';
import { requireLeader } from './require-leader.js';

/*
 * KV calls without grpc-js. A unary call through etcd3 and grpc-js costs the
 * client about 0.2 ms of CPU warm; the same call over Node's HTTP/2 directly
 * costs about 0.09 ms, and a KV call is what every recipe spends its time on
 * (docs/benchmarks.md, "Where the client CPU goes"). So a `createClient`
 * client sends its KV calls here: the same request bytes (etcd3's own
 * serializers), the same metadata, deadline and `hasleader`, the same error
 * messages (code, name, details) for etcd3 to type, on one connection per
 * member kept as grpc-js keeps it (member-connection.ts). Everything else about a
 * call stays etcd3's and the host policy's: which member, re-sends, auth,
 * avoidance. Watch, lease and maintenance calls stay on grpc-js.
 * docs/internals.md, "The KV transport", says what grpc-js did that this
 * module must do too.
 */

/** grpc-js's default limit on a received message. */
const DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024;

const STATUS_NAMES = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];
/** The longest delay `setTimeout` takes; a later deadline is left to etcd (it gets `grpc-timeout`). */
const MAX_TIMER_MS = 2 ** 31 - 1;
const CANCELLED = 1;
const DEADLINE_EXCEEDED = 4;
const RESOURCE_EXHAUSTED = 8;
const INTERNAL = 13;
const UNAVAILABLE = 14;

type Callback = (err: Error | null, reply?: unknown) => void;

/** The grpc-js method definition of a generated client (what proto-loader made from etcd3's rpc.proto). */
interface MethodDefinition {
  path: string;
  originalName?: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize(request: unknown): Buffer;
  responseDeserialize(bytes: Buffer): unknown;
}

type GrpcClient = Record<
  string,
  (request: unknown, metadata: unknown, options: unknown, callback: Callback) => unknown
>;

interface Metadata {
  getMap(): Record<string, string | Buffer>;
}

/** etcd3's Host (internal to etcd3, stable in 1.1.x): one member of the pool. */
interface Host {
  host: string;
  getServiceClient(name: string): unknown;
  close(): void;
}

/** How the lean calls reach the members, and the grpc-js settings they honour. */
export interface LeanKVOptions extends MemberConnectionOptions {
  /** The largest reply accepted, in bytes (grpc-js's `max_receive_message_length`; default 4 MiB). */
  maxReceiveBytes?: number;
}

/**
 * The lean KV transport's settings, read from the options etcd3 builds its
 * grpc-js channels from: TLS material, the reply size limit and keepalive.
 */
export function leanOptions(hosts: string[], options: Omit<IOptions, 'hosts'>): LeanKVOptions {
  const grpc = options.grpcOptions ?? {};
  const number = (key: string) => (typeof grpc[key] === 'number' ? (grpc[key] as number) : undefined);
  const maxReceive = number('grpc.max_receive_message_length');
  const settings: LeanKVOptions = {
    // grpc-js's convention: -1 is no limit.
    maxReceiveBytes: maxReceive === undefined ? undefined : maxReceive < 0 ? Infinity : maxReceive,
    keepaliveMs: number('grpc.keepalive_time_ms'),
    keepaliveTimeoutMs: number('grpc.keepalive_timeout_ms'),
  };
  const override = grpc['grpc.ssl_target_name_override'];
  const servername = typeof override === 'string' ? { servername: override } : {};
  const { credentials } = options;
  if (credentials) {
    const material = { ca: credentials.rootCertificate, key: credentials.privateKey, cert: credentials.certChain };
    return { ...settings, tls: { ...material, ...servername } };
  }
  return hosts.some((h) => h.startsWith('https:')) ? { ...settings, tls: servername } : settings;
}

/** The method definitions grpc-js's generated client constructors carry (`ServiceClientConstructor.service`). */
function serviceOf(client: unknown): Record<string, MethodDefinition> | undefined {
  const service = (client as { constructor?: { service?: unknown } }).constructor?.service;
  return service && typeof service === 'object' ? (service as Record<string, MethodDefinition>) : undefined;
}

/** An error as grpc-js makes it, so that etcd3's `castGrpcError` types it the same way. */
function grpcError(code: number, details: string): Error {
  return Object.assign(new Error(`${code} ${STATUS_NAMES[code] ?? 'UNKNOWN'}: ${details}`), {
    code,
    details,
    metadata: undefined,
  });
}

/**
 * Makes the pool's members send their KV calls through a {@link LeanKV}.
 * etcd3 asks a member for its `KV` client before every call; the grpc-js one
 * it made stays the member's cached service (so etcd3's reset and close see
 * it), and serves the calls this transport leaves to it.
 */
export function installLeanKV(hosts: readonly object[], options: LeanKVOptions): void {
  for (const member of hosts as Host[]) {
    const original = member.getServiceClient.bind(member);
    const close = member.close.bind(member);
    // One connection per member for the client's life; etcd3's resets of the member's services keep it.
    const connection = new MemberConnection(member.host, options);
    let lean: LeanKV | undefined;
    member.getServiceClient = (name: string) => {
      const client = original(name);
      // A grpc-js without the generated client's `service` (not seen in 1.x) keeps grpc-js.
      if (name !== 'KV' || !serviceOf(client)) return client;
      if (lean && lean.fallback === client) return lean.methods;
      const made = new LeanKV(client as GrpcClient, connection, options);
      lean = made;
      return made.methods;
    };
    member.close = () => {
      connection.close();
      close();
    };
  }
}

/** The KV methods etcd3 calls on one member, sent over its {@link MemberConnection}. */
class LeanKV {
  /** The methods etcd3 calls, by their etcd3 names (`range`, `txn`...). */
  readonly methods: GrpcClient = {};
  readonly #connection: MemberConnection;
  readonly #maxReceive: number;

  constructor(
    readonly fallback: GrpcClient,
    connection: MemberConnection,
    options: LeanKVOptions,
  ) {
    this.#connection = connection;
    this.#maxReceive = options.maxReceiveBytes ?? DEFAULT_MAX_RECEIVE;
    for (const [name, method] of Object.entries(serviceOf(fallback) ?? {})) {
      if (method.requestStream || method.responseStream) continue;
      const callName = method.originalName ?? name;
      this.methods[callName] = (request, metadata, callOptions, callback) => {
        if (!isPlain(callOptions)) return fallback[callName]!(request, metadata, callOptions, callback);
        this.#call(method, request, metadata as Metadata, callOptions as PlainOptions, callback);
      };
    }
  }

  #call(method: MethodDefinition, request: unknown, metadata: Metadata, options: PlainOptions, done: Callback): void {
    const left = options.deadline === undefined ? Infinity : +options.deadline - Date.now();
    // grpc-js's reading of a deadline: Infinity (or none) is no deadline.
    const timeoutMs = Number.isFinite(left) ? left : undefined;
    if (timeoutMs !== undefined && timeoutMs <= 0) {
      done(grpcError(DEADLINE_EXCEEDED, 'Deadline exceeded before the call was sent'));
      return;
    }
    const headers: OutgoingHttpHeaders = {
      ':method': 'POST',
      ':path': method.path,
      'content-type': 'application/grpc',
      te: 'trailers',
    };
    for (const [key, value] of Object.entries(metadata.getMap())) {
      headers[key] = typeof value === 'string' ? value : value.toString('base64');
    }
    if (options.interceptors?.length) headers.hasleader = 'true';
    if (timeoutMs !== undefined) headers['grpc-timeout'] = grpcTimeout(timeoutMs);
    let body: Buffer;
    try {
      const message = method.requestSerialize(request);
      body = Buffer.allocUnsafe(5 + message.length);
      body[0] = 0;
      body.writeUInt32BE(message.length, 1);
      message.copy(body, 5);
    } catch (err) {
      done(grpcError(INTERNAL, `request not serializable: ${(err as Error).message}`));
      return;
    }
    const connection = this.#connection;
    const { authority } = connection;
    let session: ClientHttp2Session;
    let stream: ClientHttp2Stream;
    try {
      session = connection.session();
      stream = session.request(headers);
    } catch (err) {
      // A connection that just received GOAWAY or ended refuses new streams: the call was not sent.
      done(grpcError(connection.closed ? CANCELLED : UNAVAILABLE, `${authority}: ${(err as Error).message}`));
      return;
    }
    connection.started(session);
    const chunks: Buffer[] = [];
    let received = 0;
    let status: number | undefined;
    let details = '';
    let failure: Error | undefined;
    let timer: NodeJS.Timeout | undefined;
    const readStatus = (fields: http2.IncomingHttpHeaders) => {
      if (fields['grpc-status'] === undefined) return;
      status = Number(fields['grpc-status']);
      details = percentDecoded(String(fields['grpc-message'] ?? ''));
    };
    stream.on('response', (fields) => {
      const httpStatus = fields[':status'];
      if (httpStatus !== 200) failure ??= grpcError(UNAVAILABLE, `HTTP status ${httpStatus} from ${authority}`);
      readStatus(fields); // a "trailers-only" reply: an error without a body
    });
    stream.on('trailers', readStatus);
    stream.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      const before = received;
      received += chunk.length;
      if (before >= 5 || received < 5) return;
      // The message's length prefix is complete: refuse a reply over the limit before it arrives.
      const length = (chunks.length === 1 ? chunk : Buffer.concat(chunks)).readUInt32BE(1);
      if (length > this.#maxReceive) {
        failure ??= grpcError(
          RESOURCE_EXHAUSTED,
          `Received message larger than max (${length} vs ${this.#maxReceive})`,
        );
        stream.close(http2.constants.NGHTTP2_CANCEL);
      }
    });
    stream.on('error', (err) => {
      failure ??= grpcError(UNAVAILABLE, `${authority}: ${err.message}`);
    });
    stream.on('close', () => {
      clearTimeout(timer);
      connection.ended(session);
      if (failure) return done(failure);
      if (status === undefined) {
        return done(grpcError(UNAVAILABLE, `${authority} ended the call (code ${stream.rstCode}) before a status`));
      }
      if (status !== 0) return done(grpcError(status, details));
      const reply = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      if (reply.length < 5 || reply[0] !== 0 || reply.readUInt32BE(1) !== reply.length - 5) {
        return done(grpcError(INTERNAL, `malformed reply from ${authority} (${reply.length} bytes)`));
      }
      let decoded: unknown;
      try {
        decoded = method.responseDeserialize(reply.subarray(5));
      } catch (err) {
        return done(grpcError(INTERNAL, `undecodable reply from ${authority}: ${(err as Error).message}`));
      }
      done(null, decoded);
    });
    if (timeoutMs !== undefined && timeoutMs <= MAX_TIMER_MS) {
      timer = setTimeout(() => {
        failure ??= grpcError(DEADLINE_EXCEEDED, `Deadline exceeded after ${(timeoutMs / 1000).toFixed(3)}s`);
        // The connection stays (as grpc-js's does): a silent one ends when its keepalive ping goes unanswered.
        stream.close(http2.constants.NGHTTP2_CANCEL);
      }, timeoutMs);
    }
    stream.end(body);
  }
}

/** grpc-message is percent-encoded; a malformed one is shown as it came. */
function percentDecoded(message: string): string {
  try {
    return decodeURIComponent(message);
  } catch {
    return message;
  }
}

/** A `grpc-timeout` header: at most 8 digits, in the finest unit that fits (as grpc-js writes it). */
function grpcTimeout(ms: number): string {
  const whole = Math.ceil(ms);
  if (whole < 1e8) return `${whole}m`;
  const seconds = Math.ceil(ms / 1000);
  return seconds < 1e8 ? `${seconds}S` : `${Math.min(Math.ceil(seconds / 3600), 99_999_999)}H`;
}

interface PlainOptions {
  deadline?: number | Date;
  interceptors?: unknown[];
}

/** Options this transport carries out itself: a deadline, and the leader requirement; anything else goes to grpc-js. */
function isPlain(options: unknown): boolean {
  if (options === undefined || options === null) return true;
  for (const [key, value] of Object.entries(options as Record<string, unknown>)) {
    if (value === undefined) continue;
    if (key === 'deadline') continue;
    if (key === 'interceptors' && Array.isArray(value) && value.every((i) => i === requireLeader)) continue;
    return false;
  }
  return true;
}
