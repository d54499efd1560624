import { setMaxListeners } from 'node:events';
import { Etcd3, type IOptions, type Namespace } from 'etcd3';
import { ClosedError } from './errors.js';
import { isConnectionFault, mayHaveLostLeader } from './etcd-errors.js';
import { installLeanKV, leanOptions } from './lean-kv.js';
import { LeaderSearch, type PoolMember } from './leader-search.js';
import { logger } from './log.js';
import { LEADER_SERVICES, requireLeader } from './require-leader.js';
import { processWide } from './shared.js';

const log = logger('client');

/*
 * The transport the recipes rely on, and the client's life cycle.
 *
 * etcd3's default fault handling re-sends a failed unary call up to three
 * times unseen by the caller, and a per-host circuit breaker then refuses
 * every call (keepalive reconnects included) for 5 s. The recipes prove
 * from etcd's state whether a write landed (docs/internals.md, "Outcome
 * unknown"), so they are correct either way, but the breaker turns a 300 ms
 * blip into lost sessions. `createClient` builds a client suited to
 * coordination instead: no hidden re-sends (the recipes retry, with proof),
 * a deadline on every unary call, fast reconnects, and a host policy that
 * steers calls away from a member that just timed out or went silent, to
 * the least suspect one; after a timeout, it finds a live leader before the
 * call is retried (core/leader-search.ts). Its KV, watch and lease calls
 * require a leader, so that a member cut off by a partition refuses them
 * (`requireLeader` below).
 */

/** Options of {@link createClient}: etcd3's own, plus the recipes' deadline. */
export interface ClientOptions extends Omit<IOptions, 'hosts'> {
  /** `host:port` endpoints (a comma-separated string, or a list); `http(s)://` prefixes are accepted. */
  hosts: string | string[];
  /**
   * Deadline of every unary call, in ms (default 1500). A call still
   * unanswered by then fails and is retried (with proof) on another member:
   * this is how a frozen member or a silent connection is left behind.
   */
  callTimeoutMs?: number;
  /**
   * How KV calls reach etcd: `'lean'` (the default) sends them over Node's
   * HTTP/2 directly, with the same requests, deadlines and errors, and about
   * a third less client CPU per call than through grpc-js (docs/benchmarks.md,
   * "The lean KV transport"); `'grpc-js'` sends them through etcd3's
   * grpc-js clients, as watch, lease and maintenance calls always go
   * (docs/internals.md, "The KV transport").
   */
  kvTransport?: 'lean' | 'grpc-js';
}

/** How long a member that timed out or went silent is avoided while another is available. */
const AVOID_MS = 3000;
const DEFAULT_CALL_TIMEOUT_MS = 1500;

/** The pool object etcd3 shares between a client and its namespaces (internal to etcd3, stable in 1.1.x). */
interface Pool {
  close(): void;
  /** Its members, in the order of the `hosts` option. */
  hosts?: PoolMember[];
}

function poolOf(client: Namespace): Pool {
  return (client as unknown as { pool: Pool }).pool;
}

/**
 * An `Etcd3` client configured for coordination (see the module comment and
 * docs/faults.md). Close it with {@link closeClient} (or its own `close()`,
 * which does the same in the background).
 * @param options - endpoints and etcd3 options; `callTimeoutMs` is the per-call deadline
 */
export function createClient(options: ClientOptions): Etcd3 {
  const { callTimeoutMs = DEFAULT_CALL_TIMEOUT_MS, kvTransport = 'lean', hosts, ...rest } = options;
  const list = (Array.isArray(hosts) ? hosts : hosts.split(',')).map((h) => h.trim()).filter(Boolean);
  const health = new HostHealth();
  const grpcOptions = {
    // grpc-js waits 1 s, then longer, before reconnecting: a 300 ms blip would cost seconds.
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1000,
    // A backstop for idle channels; etcd refuses pings more often than every 5 s.
    'grpc.keepalive_time_ms': 10_000,
    'grpc.keepalive_timeout_ms': 3000,
    ...rest.grpcOptions,
  };
  const client = new Etcd3({
    ...rest,
    hosts: list,
    faultHandling: {
      ...rest.faultHandling,
      host: (host) => health.policy(host) as never,
      global: passThrough as never,
    },
    grpcOptions,
    defaultCallOptions: (context) => {
      const own =
        typeof rest.defaultCallOptions === 'function' ? rest.defaultCallOptions(context) : rest.defaultCallOptions;
      const leader = LEADER_SERVICES.has(context.service)
        ? { interceptors: [requireLeader, ...(own?.interceptors ?? [])] }
        : {};
      return context.isStream ? { ...own, ...leader } : { deadline: Date.now() + callTimeoutMs, ...own, ...leader };
    },
  });
  coordinationPools().add(poolOf(client));
  if (kvTransport === 'lean') installLeanKV(poolOf(client).hosts ?? [], leanOptions(list, { ...rest, grpcOptions }));
  // Without etcd3's member list (a future etcd3), there is no leader to search for: calls are just retried.
  health.attach(poolOf(client).hosts ?? [], clientScope(client).signal);
  return client;
}

// ---------------------------------------------------------------------------
// Host health: the per-host policy etcd3 runs every call through.

interface Policy {
  execute<T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T>;
  onSuccess: () => { dispose(): void };
  onFailure: () => { dispose(): void };
}

const noEvent = () => ({ dispose: () => undefined });
const neverAborted = new AbortController().signal;

/** etcd3's policy slot filled with "just run it": no hidden re-sends. */
const passThrough: Policy = {
  execute: async (fn, signal) => fn({ signal: signal ?? neverAborted }),
  onSuccess: noEvent,
  onFailure: noEvent,
};

/** Streams etcd3 opened through a host policy, so that a silent one can be blamed on its member. */
// Made on first use, as every processWide value: importing the library has no side effect.
const streamHosts = () => processWide('stream-hosts', () => new WeakMap<object, HostState>());

interface HostState {
  host: string;
  avoidUntil: number;
  member?: PoolMember;
}

/** An error etcd3 treats like an open circuit: the call was not sent, try the next member. */
class MemberAvoidedError extends Error {
  constructor(host: string) {
    super(`member ${host} is avoided for a moment (it timed out or went silent)`);
    this.name = 'MemberAvoidedError';
  }
}

class HostHealth {
  readonly #hosts: HostState[] = [];
  readonly #leaderSearch = new LeaderSearch(AVOID_MS);

  /** Links each policy to its member of the pool (etcd3 makes them in the same order). */
  attach(members: readonly PoolMember[], signal: AbortSignal): void {
    for (const [i, state] of this.#hosts.entries()) state.member = members[i];
    this.#leaderSearch.attach(members, signal);
  }

  /** Lower goes first: a live leader found after a timeout, then members not suspect, then the least suspect. */
  #rank(state: HostState, now: number, leader: PoolMember | undefined): number {
    if (now < state.avoidUntil) return state.avoidUntil;
    return leader && state.member === leader ? -1 : 0;
  }

  policy(host: string): Policy {
    const state: HostState = { host, avoidUntil: 0 };
    this.#hosts.push(state);
    return {
      execute: async (fn, signal) => {
        // Step aside for a member ranked before this one (all may be suspect during an election).
        const now = performance.now();
        const leader = this.#leaderSearch.leader;
        if (now < state.avoidUntil || (leader && state.member !== leader)) {
          const mine = this.#rank(state, now, leader);
          if (this.#hosts.some((h) => h !== state && this.#rank(h, now, leader) < mine)) {
            throw new MemberAvoidedError(host);
          }
        }
        try {
          const result = await fn({ signal: signal ?? neverAborted });
          if (result && typeof result === 'object' && typeof (result as { on?: unknown }).on === 'function') {
            streamHosts().set(result, state);
          } else {
            state.avoidUntil = 0;
          }
          return result;
        } catch (err) {
          if (isConnectionFault(err)) avoid(state, (err as Error).message);
          // The retry should go where a live leader is known, not to a member that still believes in a dead one.
          if (mayHaveLostLeader(err)) await this.#leaderSearch.find();
          throw err;
        }
      },
      onSuccess: noEvent,
      onFailure: noEvent,
    };
  }
}

function avoid(state: HostState, why: string): void {
  if (performance.now() >= state.avoidUntil) log('avoiding member %s for %d ms: %s', state.host, AVOID_MS, why);
  state.avoidUntil = performance.now() + AVOID_MS;
}

/**
 * A stream (watch or keepalive) of `client` stopped answering, or its member
 * ended it for want of a leader: avoid that member for a moment, so that the
 * stream re-opens on another one.
 * @internal
 */
export function reportFailedStream(stream: object, why: string): void {
  const state = streamHosts().get(stream);
  if (state) avoid(state, why);
}

const coordinationPools = () => processWide('coordination-pools', () => new WeakSet<object>());

/**
 * True when `client` was built by {@link createClient}. Otherwise logs, once
 * per client, that etcd3's default fault policies are in force.
 * @internal
 */
export function checkTransport(client: Namespace): boolean {
  const pool = poolOf(client);
  if (coordinationPools().has(pool)) return true;
  const warned = processWide('warned-pools', () => new WeakSet<object>());
  if (!warned.has(pool)) {
    warned.add(pool);
    log(
      'this etcd3 client was not built with createClient(): its default fault policies (3 silent re-sends, a 5 s ' +
        'circuit breaker, no call deadlines) can turn a short network blip into lost sessions; see docs/faults.md',
    );
  }
  return false;
}

// ---------------------------------------------------------------------------
// Life cycle: what closing a client ends.

/** Something the library keeps open on a client: a cache, a discovery, a session it created itself. */
interface Closable {
  close(): Promise<void> | void;
}

/** @internal A client's life cycle, shared by the client and its namespaces. */
export interface ClientScope {
  /** Aborted (reason: ClosedError) once the client is closed. */
  readonly signal: AbortSignal;
  /** Closes `thing` when the client closes; returns the undo. */
  own(thing: Closable): () => void;
  /**
   * Runs `tidy` (bounded) when the client closes, before pending calls are
   * ended: last writes such as receipt clean-up.
   */
  beforeClose(tidy: () => Promise<void>): () => void;
}

interface ScopeState extends ClientScope {
  controller: AbortController;
  owned: Set<Closable>;
  tidies: Set<() => Promise<void>>;
  closing: Promise<void> | undefined;
  originalClose: () => void;
}

const scopes = () => processWide('client-scopes', () => new WeakMap<object, ScopeState>());

/** Wakes every backoff sleeper of the process when any client closes (it re-checks its own client). */
export const clientClosings = (): EventTarget =>
  processWide('client-closings', () => {
    const target = new EventTarget();
    // One listener per sleeping retry: any number may sleep at once.
    setMaxListeners(0, target);
    return target;
  });

/**
 * @internal The life cycle of `client`. The first call wraps the client's
 * `close()` so that closing it the usual way also ends the recipes' calls.
 */
export function clientScope(client: Namespace): ClientScope {
  const pool = poolOf(client);
  let scope = scopes().get(pool);
  if (!scope) {
    const controller = new AbortController();
    // Every pending call on this client listens to it: many at once are normal, not a leak.
    setMaxListeners(0, controller.signal);
    const owned = new Set<Closable>();
    const tidies = new Set<() => Promise<void>>();
    const created: ScopeState = {
      controller,
      owned,
      tidies,
      signal: controller.signal,
      closing: undefined,
      originalClose: pool.close.bind(pool),
      own(thing) {
        if (controller.signal.aborted) {
          void Promise.resolve()
            .then(() => thing.close())
            .catch(() => undefined);
          return () => undefined;
        }
        owned.add(thing);
        return () => owned.delete(thing);
      },
      beforeClose(tidy) {
        tidies.add(tidy);
        return () => tidies.delete(tidy);
      },
    };
    scope = created;
    scopes().set(pool, created);
    // etcd3's close() is synchronous; ours ends everything first, then closes the channels.
    pool.close = () => void shutDown(created);
  }
  return scope;
}

async function shutDown(scope: ScopeState): Promise<void> {
  scope.closing ??= (async () => {
    if (scope.tidies.size) await bounded(Promise.allSettled([...scope.tidies].map((tidy) => tidy())), 500);
    scope.controller.abort(new ClosedError());
    clientClosings().dispatchEvent(new Event('close'));
    const things = [...scope.owned];
    scope.owned.clear();
    await bounded(Promise.allSettled(things.map(async (t) => t.close())), 1000);
    scope.originalClose();
    log('client closed: %d owned object(s) closed', things.length);
  })();
  return scope.closing;
}

/** Waits for `work`, at most `ms`. */
async function bounded(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    work,
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

/**
 * Closes `client` and everything the library keeps on it: every pending
 * recipe call settles with a {@link ClosedError} (code `CLOSED`), caches and
 * discoveries close, sessions the library created itself (withLock,
 * runAsLeader, registrations, queue consumers) are revoked, and then the
 * client's channels close, so the process can exit at once. Calling the
 * client's own `close()` does the same without waiting. Idempotent.
 * @param client - the etcd3 client (or any of its namespaces)
 */
export function closeClient(client: Namespace): Promise<void> {
  const scope = clientScope(client) as ScopeState;
  return shutDown(scope);
}
