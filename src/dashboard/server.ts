import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Namespace } from 'etcd3';
import { InvalidArgumentError } from '../core/errors.js';
import { logger } from '../core/log.js';
import { checkBoolean, checkClient, checkInteger, checkOptions } from '../core/validate.js';
import { discoverRecipes, inspectRecipe, type RecipeInspection } from '../inspect/discover.js';
import { inspectionJSON } from '../inspect/format.js';
import { LiveView } from '../inspect/live.js';
import { mapInChunks } from '../inspect/read.js';
import { allowed, isLoopbackHost } from './access.js';
import { dashboardPage } from './page.js';

const log = logger('dashboard');

/** Options of {@link startDashboard}. */
export interface DashboardOptions {
  /** Show the recipes whose keys are under this prefix (default `''`: the whole keyspace). */
  prefix?: string;
  /** TCP port (default 0, which picks a free one; see {@link Dashboard.port}). */
  port?: number;
  /**
   * Interface to bind (default `'127.0.0.1'`). Anything but a loopback
   * address (127.0.0.0/8, `::1`, `localhost`) also needs `exposed: true`
   * and a `token`.
   */
  host?: string;
  /**
   * A secret (at least 16 characters) every request must carry, as
   * `Authorization: Bearer <token>` or `?token=<token>` (open the page as
   * `<url>?token=<token>`). Checked in constant time on every request,
   * loopback included when given.
   */
  token?: string;
  /** Required (with `token`) to bind a non-loopback interface: says you mean to serve it to the network. */
  exposed?: boolean;
  /** Re-read at least this often (ms) even without changes, for lease TTLs. Default 5000. */
  refreshMs?: number;
  /** Most keys listed per holder/waiter/job list on the page (default 100). */
  limit?: number;
}

/** The state the page shows, as `GET /state` and each server-sent event carry it (JSON, bigints as strings). */
export interface DashboardState {
  /** The prefix the dashboard looks under. */
  prefix: string;
  /** The highest store revision among the reads. */
  revision: bigint;
  /** ISO time of the read. */
  updatedAt: string;
  /** Every recipe found under the prefix, inspected. */
  recipes: RecipeInspection[];
  /** Why the last read failed (the recipes are then the previous ones). */
  error?: string;
}

/** A running dashboard, from {@link startDashboard}. */
export interface Dashboard extends AsyncDisposable {
  /** `http://<host>:<port>/` (without the token). */
  readonly url: string;
  /** The address it listens on. */
  readonly host: string;
  /** The port it listens on. */
  readonly port: number;
  /** Reads the state once, as `GET /state` does. */
  state(): Promise<DashboardState>;
  /** Stops serving (ends open event streams). Idempotent. */
  close(): Promise<void>;
}

/**
 * Serves a read-only dashboard of the recipes under `prefix`: one page with
 * live updates (server-sent events) of locks, semaphores and read-write
 * locks with their holders and waiters, elections with their leader and
 * candidates, queues, work queues and services, found from their key
 * layouts (see {@link discoverRecipes}). It only reads etcd: ranges, lease
 * TTL lookups and one watch on the prefix, the watch only while a page is
 * open. Node's own http server, no dependency.
 *
 * Routes: `GET /` (the page), `GET /events` (server-sent events, one
 * `state` event per change), `GET /state` (the state as JSON).
 * @throws InvalidArgumentError for bad options, or a non-loopback host without `exposed` and `token`
 */
export async function startDashboard(client: Namespace, options: DashboardOptions = {}): Promise<Dashboard> {
  checkClient(client);
  checkOptions(options);
  const prefix = options.prefix ?? '';
  if (typeof prefix !== 'string')
    throw new InvalidArgumentError('options.prefix', `must be a string, got ${typeof prefix}`);
  if (options.port !== undefined) checkInteger(options.port, 'options.port', 0, 65535);
  const host = options.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '')
    throw new InvalidArgumentError('options.host', 'must be a non-empty string');
  const { token } = options;
  if (token !== undefined && (typeof token !== 'string' || token.length < 16)) {
    throw new InvalidArgumentError('options.token', 'must be a string of at least 16 characters');
  }
  checkBoolean(options.exposed, 'options.exposed');
  if (!isLoopbackHost(host) && !(options.exposed === true && token !== undefined)) {
    throw new InvalidArgumentError(
      'options.host',
      `${JSON.stringify(host)} is not a loopback address: serving the dashboard beyond this ` +
        'machine needs exposed: true and a token (it shows lock holders, leaders, job values and service addresses)',
    );
  }
  if (options.refreshMs !== undefined) checkInteger(options.refreshMs, 'options.refreshMs', 100);
  if (options.limit !== undefined) checkInteger(options.limit, 'options.limit', 1, 10_000);
  const limit = options.limit ?? 100;

  const read = async (): Promise<DashboardState> => {
    const found = await discoverRecipes(client, prefix);
    // A few at a time: a prefix may hold many recipes.
    const recipes = await mapInChunks(found, 8, (r) => inspectRecipe(client, r, { limit }));
    const revision = recipes.reduce((max, r) => (r.inspection.revision > max ? r.inspection.revision : max), 0n);
    return { prefix, revision, updatedAt: new Date().toISOString(), recipes };
  };

  const streams = new Set<ServerResponse>();
  let latest: string | undefined;
  let lastGood: DashboardState | undefined;
  const publish = (state: DashboardState) => {
    latest = inspectionJSON(state);
    for (const res of streams) res.write(`event: state\ndata: ${latest}\n\n`);
  };
  let view: LiveView<DashboardState> | undefined;
  const watchPrefixes = prefix ? [Buffer.from(prefix), Buffer.from(`__${prefix}`)] : [Buffer.alloc(0)];
  const startView = () => {
    view = new LiveView(
      client,
      prefix.startsWith('__') ? watchPrefixes.slice(0, 1) : watchPrefixes,
      read,
      (state) => {
        lastGood = state;
        publish(state);
      },
      (err) => {
        log('read failed: %s', (err as Error).message);
        publish({
          ...(lastGood ?? { prefix, revision: 0n, recipes: [] }),
          updatedAt: new Date().toISOString(),
          error: (err as Error).message,
        });
      },
      { periodMs: options.refreshMs ?? 5000 },
    );
    view.start().catch((err: unknown) => log('watch failed: %s', (err as Error).message));
  };

  const nonceFor = () => randomBytes(16).toString('base64');
  const headers = (type: string, nonce?: string) => ({
    'content-type': type,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'x-frame-options': 'DENY',
    'content-security-policy': nonce
      ? `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; ` +
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
      : "default-src 'none'; frame-ancestors 'none'",
  });

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://dashboard.invalid');
    if (!allowed(req, url, token)) {
      res.writeHead(token === undefined ? 421 : 401, headers('text/plain; charset=utf-8'));
      res.end(
        token === undefined ? 'misdirected request: use a loopback host name\n' : 'unauthorized: pass the token\n',
      );
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { ...headers('text/plain; charset=utf-8'), allow: 'GET, HEAD' });
      res.end('read-only\n');
      return;
    }
    if (url.pathname === '/') {
      const nonce = nonceFor();
      res.writeHead(200, headers('text/html; charset=utf-8', nonce));
      res.end(dashboardPage(nonce));
    } else if (url.pathname === '/state') {
      read().then(
        (state) => {
          res.writeHead(200, headers('application/json'));
          res.end(inspectionJSON(state));
        },
        (err: unknown) => {
          res.writeHead(502, headers('text/plain; charset=utf-8'));
          res.end(`etcd read failed: ${(err as Error).message}\n`);
        },
      );
    } else if (url.pathname === '/events') {
      res.writeHead(200, { ...headers('text/event-stream; charset=utf-8'), connection: 'keep-alive' });
      res.write('retry: 2000\n\n');
      if (latest) res.write(`event: state\ndata: ${latest}\n\n`);
      streams.add(res);
      if (!view) startView();
      else view.poke(0);
      req.on('close', () => {
        streams.delete(res);
        // Nobody looking: stop watching and reading.
        if (streams.size === 0 && view) {
          view.close();
          view = undefined;
          latest = undefined;
        }
      });
    } else {
      res.writeHead(404, headers('text/plain; charset=utf-8'));
      res.end('not found\n');
    }
  };

  const server = createServer(handle);
  // SSE comments keep idle proxies from closing the stream.
  const heartbeat = setInterval(() => {
    for (const res of streams) res.write(': ping\n\n');
  }, 15_000);
  heartbeat.unref();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const urlHost = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${urlHost}:${address.port}/`;
  log('serving %s (prefix %j)', url, prefix);
  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= new Promise<void>((resolve) => {
      clearInterval(heartbeat);
      view?.close();
      view = undefined;
      for (const res of streams) res.end();
      streams.clear();
      server.close(() => resolve());
      server.closeAllConnections();
    });
    return closing;
  };
  return { url, host: address.address, port: address.port, state: read, close, [Symbol.asyncDispose]: close };
}
