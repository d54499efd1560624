import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, Range, type IOptions } from 'etcd3';
import { TestCertificateAuthority, type CertificatePair } from './certs.js';
import { findEtcdBinary } from './etcd-binary.js';

/** Options of {@link EtcdCluster.start}. */
export interface EtcdClusterOptions {
  /** 1 (default) or 3 members. */
  members?: 1 | 3;
  /**
   * Where member data goes. Default: a fresh directory under /dev/shm when it
   * exists (fast, no fsync cost), else under the OS temp dir. Pass
   * `'disk'` for a directory under the OS temp dir (for realistic benchmarks).
   */
  dataDir?: string | 'disk';
  /**
   * Raft timing. `'fast'` (default): heartbeat 25 ms, election 250 ms, so
   * leader failover and 1–2 s lease TTLs behave in tests. `'default'`: etcd's
   * own 100 ms / 1000 ms. Or explicit values.
   */
  timing?:
    | 'fast'
    | 'default'
    | {
        /** etcd's `--heartbeat-interval`, in milliseconds. */
        heartbeatMs: number;
        /** etcd's `--election-timeout`, in milliseconds. */
        electionMs: number;
      };
  /** Path of the etcd binary; default from {@link findEtcdBinary}. */
  etcdBin?: string;
  /** Install etcd with apt-get when missing (root only). Default false. */
  install?: boolean;
  /** Extra command-line flags for every member. */
  extraArgs?: string[];
  /** How long to wait for the cluster to become healthy, in ms. Default 30 000. */
  startTimeoutMs?: number;
  /**
   * Serve clients and peers over TLS, with certificates made at start by
   * `openssl` in the cluster's temporary directory (no key is stored
   * anywhere else). `true`: server certificates only, like a server behind
   * HTTPS. `{ clientCertAuth: true }`: members also require a client
   * certificate signed by the cluster's CA (etcd's `--client-cert-auth`);
   * {@link EtcdCluster.client} presents one. Client URLs become `https://`;
   * health and metrics stay on a plain-HTTP {@link EtcdMember.metricsUrl}.
   */
  tls?:
    | boolean
    | {
        /** Members require a client certificate. */
        clientCertAuth?: boolean;
      };
  /**
   * Enable etcd's authentication once the cluster is up: the `root` user
   * (with the `root` role) is created and auth is enabled.
   * {@link EtcdCluster.client} then logs in as root; make users with only
   * the permissions you want with {@link EtcdCluster.createUser}.
   */
  auth?:
    | boolean
    | {
        /** The root user's password (default: a random one). */
        rootPassword?: string;
      };
}

/** User name and password of an etcd user, as etcd3's `auth` option takes them. */
export interface EtcdCredentials {
  /** The user's name. */
  readonly username: string;
  /** The user's password. */
  readonly password: string;
}

/** One permission of {@link EtcdCluster.createUser}: a key, a prefix or a range `[key, end)`. */
export type EtcdGrant =
  | {
      /** Every key starting with this. */
      readonly prefix: string;
      /** Default `'readwrite'`. */
      readonly permission?: 'read' | 'write' | 'readwrite';
    }
  | {
      /** This one key. */
      readonly key: string;
      /** Default `'readwrite'`. */
      readonly permission?: 'read' | 'write' | 'readwrite';
    }
  | {
      /** The first key of the range. */
      readonly key: string;
      /** The end of the range (excluded). */
      readonly end: string;
      /** Default `'readwrite'`. */
      readonly permission?: 'read' | 'write' | 'readwrite';
    };

/** The TLS material of a cluster started with `tls`. */
export interface EtcdClusterTls {
  /** The test CA that signed every certificate (trust it as `rootCertificate`). */
  readonly ca: CertificatePair;
  /** The members' certificate (server and peer). */
  readonly server: CertificatePair;
  /** Whether members require a client certificate. */
  readonly clientCertAuth: boolean;
  /** The certificate {@link EtcdCluster.client} presents when `clientCertAuth` is on. */
  readonly client: CertificatePair | undefined;
}

/*
 * Test certificates name 127.0.0.1 and localhost. grpc-js would send the IP
 * as the TLS server name, which RFC 6066 forbids (Node warns, DEP0123);
 * naming the target `localhost` is what a real deployment does with a DNS
 * name, and the certificate covers it.
 */
const TLS_GRPC_OPTIONS = { 'grpc.ssl_target_name_override': 'localhost' } as const;

/** etcd3's fault policy that neither retries nor breaks: one status probe, one answer. */
const noRetry = {
  execute: <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T) =>
    Promise.resolve(fn({ signal: new AbortController().signal })),
} as unknown as NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** TLS material for plain-Node requests to a member. */
interface MemberTls {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** Where a member is in its life. */
export type MemberState = 'running' | 'paused' | 'stopped';

const running = new Set<EtcdMember>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort when a test runner exits without stopping its clusters. The
  // wrapper shell also kills etcd when our stdin pipe closes, which covers a
  // SIGKILLed parent.
  process.on('exit', () => {
    for (const m of running) m.killNow();
  });
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/*
 * etcd runs under a tiny sh wrapper: it prints etcd's pid, kills etcd with
 * SIGKILL when its stdin (a pipe from this process) reaches EOF — which also
 * happens when this process dies without cleaning up — and reports etcd's
 * exit status. Every signal we send goes to etcd's own pid.
 */
const WRAPPER = [
  'exec 3<&0',
  '"$@" </dev/null 3<&- &',
  'pid=$!',
  'echo "pid:$pid"',
  '( read _ <&3; kill -9 "$pid" 2>/dev/null ) &',
  'reader=$!',
  'wait "$pid"; code=$?',
  'kill "$reader" 2>/dev/null',
  'echo "exit:$code"',
].join('\n');

/**
 * One etcd process of an {@link EtcdCluster}.
 * @hideconstructor
 */
export class EtcdMember {
  /** Member name, `m0`, `m1`, ... */
  readonly name: string;
  /** `127.0.0.1:<port>`: what etcd3's `hosts` option takes. */
  readonly endpoint: string;
  /** `http://127.0.0.1:<port>`, or `https://` on a TLS cluster. */
  readonly clientUrl: string;
  /**
   * Where `/health` and `/metrics` answer over plain HTTP: the client URL,
   * or on a TLS cluster a separate `--listen-metrics-urls` port. Pass it to
   * {@link requestCounts}.
   */
  readonly metricsUrl: string;
  /** `http://127.0.0.1:<port>`: where the other members reach it. */
  readonly peerUrl: string;
  /** This member's data directory. */
  readonly dataDir: string;
  #args: string[];
  #bin: string;
  #tls: MemberTls | undefined;
  #wrapper: ChildProcess | undefined;
  #pid: number | undefined;
  #state: MemberState = 'stopped';
  #exited: Promise<number | null> = Promise.resolve(null);
  #log: string[] = [];

  /** Made by {@link EtcdCluster.start}; not meant to be called directly. */
  constructor(
    bin: string,
    name: string,
    ports: { client: number; peer: number; metrics?: number },
    dataDir: string,
    args: string[],
    tls?: MemberTls,
  ) {
    const scheme = tls ? 'https' : 'http';
    this.#bin = bin;
    this.name = name;
    this.endpoint = `127.0.0.1:${ports.client}`;
    this.clientUrl = `${scheme}://127.0.0.1:${ports.client}`;
    this.metricsUrl = ports.metrics ? `http://127.0.0.1:${ports.metrics}` : this.clientUrl;
    this.peerUrl = `${scheme}://127.0.0.1:${ports.peer}`;
    this.dataDir = dataDir;
    this.#args = args;
    this.#tls = tls;
  }

  /** etcd's pid while it runs. */
  get pid(): number | undefined {
    return this.#pid;
  }

  /** Running, paused (SIGSTOP) or stopped. */
  get state(): MemberState {
    return this.#state;
  }

  /** The last lines etcd wrote to stderr (for diagnostics). */
  get recentLog(): string {
    return this.#log.join('\n');
  }

  /** @internal Starts the process; resolves once its pid is known (not yet healthy). */
  async spawn(): Promise<void> {
    if (this.#state !== 'stopped') throw new Error(`member ${this.name} is already ${this.#state}`);
    installExitHook();
    const child = spawn('sh', ['-c', WRAPPER, 'etcd-wrapper', this.#bin, ...this.#args], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.#wrapper = child;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.#log.push(...chunk.split('\n').filter(Boolean));
      if (this.#log.length > 200) this.#log.splice(0, this.#log.length - 200);
    });
    child.stdin!.on('error', () => undefined);
    let exitCode: (code: number | null) => void = () => undefined;
    this.#exited = new Promise((resolve) => {
      exitCode = resolve;
    });
    child.stdout!.setEncoding('utf8');
    const pid = await new Promise<number>((resolve, reject) => {
      let buffered = '';
      child.stdout!.on('data', (chunk: string) => {
        buffered += chunk;
        for (;;) {
          const nl = buffered.indexOf('\n');
          if (nl < 0) break;
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (line.startsWith('pid:')) resolve(Number(line.slice(4)));
          if (line.startsWith('exit:')) exitCode(Number(line.slice(5)));
        }
      });
      child.on('exit', () => {
        reject(new Error(`etcd wrapper for ${this.name} exited before reporting a pid`));
        exitCode(null);
      });
      child.on('error', reject);
    });
    this.#pid = pid;
    this.#state = 'running';
    running.add(this);
    void this.#exited.then(() => {
      if (this.#wrapper === child) {
        this.#state = 'stopped';
        this.#pid = undefined;
        running.delete(this);
        child.stdin!.end();
      }
    });
  }

  /** Resolves with etcd's exit status once it has exited (null if unknown). */
  exited(): Promise<number | null> {
    return this.#exited;
  }

  /** Sends `signal` to etcd's pid. */
  signal(signal: NodeJS.Signals): void {
    if (this.#pid === undefined) throw new Error(`member ${this.name} is not running`);
    process.kill(this.#pid, signal);
  }

  /** SIGSTOP: the process freezes (a GC pause, a VM migration, a hung disk). */
  pause(): void {
    this.signal('SIGSTOP');
    this.#state = 'paused';
  }

  /** SIGCONT after {@link EtcdMember.pause}. */
  resume(): void {
    this.signal('SIGCONT');
    this.#state = 'running';
  }

  /** SIGKILL (crash) and wait until the process is gone. */
  async kill(): Promise<void> {
    if (this.#pid === undefined) return;
    this.killNow();
    await this.#exited;
  }

  /** @internal Synchronous SIGKILL, for exit hooks. */
  killNow(): void {
    if (this.#pid === undefined) return;
    try {
      process.kill(this.#pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }

  /** Graceful stop: SIGTERM (SIGCONT first if paused), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 5000): Promise<void> {
    if (this.#pid === undefined) return;
    const pid = this.#pid;
    try {
      if (this.#state === 'paused') process.kill(pid, 'SIGCONT');
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
    const timer = setTimeout(() => this.killNow(), timeoutMs);
    await this.#exited;
    clearTimeout(timer);
  }

  /** Starts a stopped (or killed) member again on the same ports and data, and waits until it is healthy. */
  async restart(timeoutMs = 30_000): Promise<void> {
    await this.stop();
    await this.spawn();
    await this.waitHealthy(timeoutMs);
  }

  /** Waits (bounded) until this member answers /health with true. */
  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    let pause = 20;
    while (!(await this.healthy())) {
      if (this.#state === 'stopped')
        throw new Error(`member ${this.name} exited:\n${this.recentLog.split('\n').slice(-10).join('\n')}`);
      if (performance.now() + pause > deadline)
        throw new Error(`member ${this.name} not healthy after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 250);
    }
  }

  /** GET /health once: true when the member is up and sees a leader. */
  async healthy(timeoutMs = 1000): Promise<boolean> {
    if (this.#state !== 'running') return false;
    try {
      const body = (await requestJson(`${this.metricsUrl}/health`, { timeoutMs })) as { health?: string };
      return body.health === 'true';
    } catch {
      return false;
    }
  }

  /** The member's status: its own ID and the leader's ID as it sees it (decimal strings). */
  async status(timeoutMs = 1000): Promise<{
    /** This member's ID. */
    memberId: string;
    /** The leader's ID, as this member sees it. */
    leaderId: string;
    /** The current Raft term. */
    raftTerm: string;
  }> {
    if (this.#tls) {
      // etcd's HTTP gateway refuses requests that carry a client certificate once auth is on: ask over gRPC.
      const client = new Etcd3({
        hosts: [this.endpoint],
        credentials: {
          rootCertificate: this.#tls.ca,
          ...(this.#tls.cert ? { certChain: this.#tls.cert, privateKey: this.#tls.key } : {}),
        },
        grpcOptions: TLS_GRPC_OPTIONS,
        faultHandling: { global: noRetry, host: () => noRetry },
      });
      try {
        const res = await client.maintenance.status({ deadline: new Date(Date.now() + timeoutMs) });
        return { memberId: res.header.member_id, leaderId: res.leader, raftTerm: res.header.raft_term };
      } finally {
        client.close();
      }
    }
    const body = (await requestJson(`${this.clientUrl}/v3/maintenance/status`, { body: '{}', timeoutMs })) as {
      header: { member_id: string; raft_term: string };
      leader: string;
    };
    return { memberId: body.header.member_id, leaderId: body.leader, raftTerm: body.header.raft_term };
  }

  /** @internal */
  removeData(): void {
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** GET (or POST `body`) and parse JSON; node:http(s) rather than fetch, since fetch cannot take a private CA. */
function requestJson(url: string, options: { body?: string; timeoutMs: number; tls?: MemberTls }): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const send = url.startsWith('https:') ? httpsRequest : httpRequest;
    const req = send(
      url,
      {
        method: options.body === undefined ? 'GET' : 'POST',
        timeout: options.timeoutMs,
        agent: false,
        ...(options.tls ? { ca: options.tls.ca, cert: options.tls.cert, key: options.tls.key } : {}),
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          text += d;
        });
        res.on('end', () => {
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new Error(`${url}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${url}: no answer within ${options.timeoutMs} ms`)));
    req.on('error', reject);
    req.end(options.body);
  });
}

function defaultDataRoot(dataDir: EtcdClusterOptions['dataDir']): string {
  if (dataDir && dataDir !== 'disk') return dataDir;
  if (dataDir !== 'disk' && existsSync('/dev/shm')) return '/dev/shm';
  return tmpdir();
}

/**
 * A throwaway etcd cluster (1 or 3 members) on free 127.0.0.1 ports, for
 * tests, examples and benchmarks. Members are stopped by pid on `stop()`,
 * on process exit, and (through a wrapper shell) when this process dies.
 *
 * ```ts
 * import { EtcdCluster } from 'etcd-recipes/testing';
 * await using etcd = await EtcdCluster.start({ members: 3 });
 * const client = etcd.client();
 * ```
 */
export class EtcdCluster implements AsyncDisposable {
  /** The members, in start order (`m0`, `m1`, ...). */
  readonly members: readonly EtcdMember[];
  /** Root directory of this cluster's data (removed on stop). */
  readonly dataDir: string;
  /** Certificates of a cluster started with `tls`; undefined otherwise. */
  readonly tls: EtcdClusterTls | undefined;
  readonly #clients = new Set<Etcd3>();
  readonly #startTimeoutMs: number;
  readonly #authority: TestCertificateAuthority | undefined;
  #root: EtcdCredentials | undefined;
  #stopped = false;

  private constructor(
    members: EtcdMember[],
    dataDir: string,
    startTimeoutMs: number,
    authority: TestCertificateAuthority | undefined,
    tls: EtcdClusterTls | undefined,
  ) {
    this.members = members;
    this.dataDir = dataDir;
    this.#startTimeoutMs = startTimeoutMs;
    this.#authority = authority;
    this.tls = tls;
  }

  /** Starts a cluster and waits until every member is healthy (and, with `auth`, until auth is on). */
  static async start(options: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    const size = options.members ?? 1;
    if (size !== 1 && size !== 3) throw new RangeError(`members must be 1 or 3, got ${String(size)}`);
    const bin = options.etcdBin ?? findEtcdBinary({ install: options.install });
    const timing = options.timing ?? 'fast';
    const { heartbeatMs, electionMs } =
      timing === 'fast'
        ? { heartbeatMs: 25, electionMs: 250 }
        : timing === 'default'
          ? { heartbeatMs: 100, electionMs: 1000 }
          : timing;
    const root = join(
      defaultDataRoot(options.dataDir),
      `etcd-recipes-${process.pid}-${randomBytes(4).toString('hex')}`,
    );
    mkdirSync(root, { recursive: true });
    const startTimeoutMs = options.startTimeoutMs ?? 30_000;

    let authority: TestCertificateAuthority | undefined;
    let tls: EtcdClusterTls | undefined;
    if (options.tls) {
      const clientCertAuth = typeof options.tls === 'object' && !!options.tls.clientCertAuth;
      const certDir = join(root, 'certs');
      mkdirSync(certDir, { recursive: true, mode: 0o700 });
      try {
        authority = TestCertificateAuthority.create(certDir, { install: options.install });
        tls = {
          ca: authority.ca,
          server: authority.server(),
          clientCertAuth,
          // Not a user name etcd knows: with auth on, identity comes from the password, never from this CN.
          client: clientCertAuth ? authority.client('etcd-recipes-test-client') : undefined,
        };
      } catch (err) {
        rmSync(root, { recursive: true, force: true });
        throw err;
      }
    }
    const tlsArgs = tls
      ? [
          '--cert-file',
          tls.server.certFile,
          '--key-file',
          tls.server.keyFile,
          ...(tls.clientCertAuth ? ['--client-cert-auth', '--trusted-ca-file', tls.ca.certFile] : []),
          '--peer-cert-file',
          tls.server.certFile,
          '--peer-key-file',
          tls.server.keyFile,
          '--peer-client-cert-auth',
          '--peer-trusted-ca-file',
          tls.ca.certFile,
        ]
      : [];
    const memberTls: MemberTls | undefined = tls
      ? { ca: tls.ca.cert, cert: tls.client?.cert, key: tls.client?.key }
      : undefined;
    const scheme = tls ? 'https' : 'http';
    const portsPerMember = tls ? 3 : 2;

    for (let attempt = 1; ; attempt++) {
      const ports: number[] = [];
      while (ports.length < size * portsPerMember) {
        const p = await freePort();
        if (!ports.includes(p)) ports.push(p);
      }
      const names = Array.from({ length: size }, (_, i) => `m${i}`);
      const initialCluster = names.map((n, i) => `${n}=${scheme}://127.0.0.1:${ports[size + i]}`).join(',');
      const token = `etcd-recipes-${randomBytes(6).toString('hex')}`;
      const members = names.map((name, i) => {
        const client = ports[i]!;
        const peer = ports[size + i]!;
        const metrics = tls ? ports[2 * size + i]! : undefined;
        const dir = join(root, `${name}-${attempt}`);
        return new EtcdMember(
          bin,
          name,
          { client, peer, metrics },
          dir,
          [
            '--name',
            name,
            '--data-dir',
            dir,
            '--listen-client-urls',
            `${scheme}://127.0.0.1:${client}`,
            '--advertise-client-urls',
            `${scheme}://127.0.0.1:${client}`,
            '--listen-peer-urls',
            `${scheme}://127.0.0.1:${peer}`,
            '--initial-advertise-peer-urls',
            `${scheme}://127.0.0.1:${peer}`,
            '--initial-cluster',
            initialCluster,
            '--initial-cluster-state',
            'new',
            '--initial-cluster-token',
            token,
            '--heartbeat-interval',
            String(heartbeatMs),
            '--election-timeout',
            String(electionMs),
            '--logger',
            'zap',
            '--log-outputs',
            'stderr',
            '--log-level',
            'warn',
            ...(metrics ? ['--listen-metrics-urls', `http://127.0.0.1:${metrics}`] : []),
            ...tlsArgs,
            ...(options.extraArgs ?? []),
          ],
          memberTls,
        );
      });
      const cluster = new EtcdCluster(members, root, startTimeoutMs, authority, tls);
      try {
        await Promise.all(members.map((m) => m.spawn()));
        await cluster.waitHealthy();
      } catch (err) {
        const logs = members.map((m) => `--- ${m.name}\n${m.recentLog.split('\n').slice(-15).join('\n')}`).join('\n');
        await Promise.all(members.map((m) => m.kill()));
        for (const m of members) m.removeData();
        // A port taken between probing and binding: try once more with new ports.
        if (attempt < 3 && /address already in use|bind/i.test(logs)) continue;
        rmSync(root, { recursive: true, force: true });
        throw new Error(`etcd cluster did not start: ${(err as Error).message}\n${logs}`);
      }
      if (options.auth) {
        try {
          await cluster.#enableAuth(typeof options.auth === 'object' ? options.auth.rootPassword : undefined);
        } catch (err) {
          await cluster.stop();
          throw new Error(`etcd cluster started but enabling auth failed: ${(err as Error).message}`);
        }
      }
      return cluster;
    }
  }

  /** Creates root (with the root role) and enables auth, through a short-lived client. */
  async #enableAuth(password = randomBytes(12).toString('base64url')): Promise<void> {
    const admin = new Etcd3(this.clientOptions());
    try {
      await admin.user('root').create(password);
      try {
        await admin.role('root').create();
      } catch (err) {
        if (!/role name already exists/i.test((err as Error).message)) throw err;
      }
      await admin.user('root').addRole('root');
      await admin.auth.authEnable({});
    } finally {
      admin.close();
    }
    this.#root = { username: 'root', password };
  }

  /** The root user's credentials on a cluster started with `auth`; undefined otherwise. */
  get rootUser(): EtcdCredentials | undefined {
    return this.#root;
  }

  /**
   * Creates a user whose one role (named after the user) grants only
   * `grants`, and returns its credentials, for testing code under least
   * privilege: `cluster.client({ auth: await cluster.createUser('app', [{ prefix: 'locks/app' }]) })`.
   * Needs a cluster started with `auth`. The password is random unless given.
   */
  async createUser(
    name: string,
    grants: readonly EtcdGrant[],
    password = randomBytes(12).toString('base64url'),
  ): Promise<EtcdCredentials> {
    if (!this.#root) throw new Error('createUser needs a cluster started with { auth: true }');
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(name) || name === 'root') {
      throw new RangeError(`user name must be 1-64 of [A-Za-z0-9._-] and not root, got ${JSON.stringify(name)}`);
    }
    const admin = new Etcd3(this.clientOptions());
    try {
      const role = admin.role(`${name}-role`);
      await role.create();
      for (const g of grants) {
        const permission = g.permission === 'read' ? 'Read' : g.permission === 'write' ? 'Write' : 'Readwrite';
        if ('prefix' in g) await role.grant({ permission, range: Range.prefix(g.prefix) });
        else if ('end' in g) await role.grant({ permission, range: new Range(g.key, g.end) });
        else await role.grant({ permission, key: g.key });
      }
      await admin.user(name).create(password);
      await admin.user(name).addRole(role);
    } finally {
      admin.close();
    }
    return { username: name, password };
  }

  /**
   * A new client certificate signed by the cluster's CA, with `commonName`
   * as its subject. With `tls: { clientCertAuth: true }` and `auth`, etcd
   * takes the common name as the user name of a client that sends no
   * password. Pass it as etcd3's `credentials`:
   * `{ rootCertificate: cluster.tls.ca.cert, certChain: pair.cert, privateKey: pair.key }`.
   */
  clientCertificate(commonName: string): CertificatePair {
    if (!this.#authority) throw new Error('clientCertificate needs a cluster started with { tls: ... }');
    return this.#authority.client(commonName);
  }

  /**
   * etcd3 options for this cluster: every member's endpoint (unless `hosts`
   * is given), the TLS credentials (CA, and the client certificate when
   * required) and, with auth, root's login. Anything in `options` wins, so
   * `clientOptions({ auth: user })` logs in as `user`. Hand it to your own
   * client factory; {@link EtcdCluster.client} uses it too.
   */
  clientOptions(options: Partial<IOptions> = {}): IOptions {
    const base: IOptions = { hosts: this.endpoints };
    if (this.tls) {
      base.credentials = {
        rootCertificate: this.tls.ca.cert,
        ...(this.tls.client ? { certChain: this.tls.client.cert, privateKey: this.tls.client.key } : {}),
      };
    }
    if (this.#root) base.auth = { ...this.#root };
    const grpcOptions = this.tls ? { ...TLS_GRPC_OPTIONS, ...options.grpcOptions } : options.grpcOptions;
    return { ...base, ...options, hosts: options.hosts ?? this.endpoints, ...(grpcOptions ? { grpcOptions } : {}) };
  }

  /** Client endpoints of every member, `127.0.0.1:<port>`. */
  get endpoints(): string[] {
    return this.members.map((m) => m.endpoint);
  }

  /**
   * A new etcd3 client for this cluster, built from
   * {@link EtcdCluster.clientOptions} (so with TLS and root's login when
   * the cluster has them), closed by {@link EtcdCluster.stop}.
   */
  client(options: Partial<IOptions> = {}): Etcd3 {
    const client = new Etcd3(this.clientOptions(options));
    this.#clients.add(client);
    return client;
  }

  /** Waits until every running member reports healthy (bounded by the start timeout). */
  async waitHealthy(timeoutMs = this.#startTimeoutMs): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    let delay = 20;
    for (;;) {
      const live = this.members.filter((m) => m.state === 'running');
      const states = await Promise.all(live.map((m) => m.healthy()));
      if (states.every(Boolean)) return;
      if (live.length === 0) throw new Error('no member is running');
      if (performance.now() + delay > deadline) {
        throw new Error(
          `not healthy after ${timeoutMs} ms (${live
            .filter((_, i) => !states[i])
            .map((m) => m.name)
            .join(', ')})`,
        );
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 250);
    }
  }

  /**
   * The member that is Raft leader now, as the running members agree;
   * waits (bounded) while an election is in progress.
   */
  async leader(timeoutMs = 10_000): Promise<EtcdMember> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const live = this.members.filter((m) => m.state === 'running');
      const statuses = await Promise.all(
        live.map((m) =>
          m.status(500).then(
            (s) => ({ m, s }),
            () => undefined,
          ),
        ),
      );
      const ok = statuses.filter((x): x is NonNullable<typeof x> => !!x);
      const leaderId = ok[0]?.s.leaderId;
      if (leaderId && leaderId !== '0' && ok.every((x) => x.s.leaderId === leaderId)) {
        const leader = ok.find((x) => x.s.memberId === leaderId)?.m;
        if (leader) return leader;
      }
      if (performance.now() > deadline) throw new Error('no agreed Raft leader');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Members other than the current leader. */
  async followers(): Promise<EtcdMember[]> {
    const leader = await this.leader();
    return this.members.filter((m) => m !== leader);
  }

  /** Closes clients, stops every member by pid, removes the data. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const c of this.#clients) c.close();
    this.#clients.clear();
    await Promise.all(this.members.map((m) => m.stop(2000)));
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** `await using etcd = await EtcdCluster.start()` stops it at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
