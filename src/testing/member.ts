import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer, type Server } from 'node:net';
import { Etcd3, type IOptions } from 'etcd3';
import { retrying } from '../core/retry.js';

/*
 * Test certificates name 127.0.0.1 and localhost. grpc-js would send the IP
 * as the TLS server name, which RFC 6066 forbids (Node warns, DEP0123);
 * naming the target `localhost` is what a real deployment does with a DNS
 * name, and the certificate covers it.
 */
export const TLS_GRPC_OPTIONS = { 'grpc.ssl_target_name_override': 'localhost' } as const;

/** etcd3's fault policy that neither retries nor breaks: one status probe, one answer. */
const noRetry = {
  execute: <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T) =>
    Promise.resolve(fn({ signal: new AbortController().signal })),
} as unknown as NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/** TLS material for plain-Node requests to a member. */
export interface MemberTls {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** Starts `server` listening on a free 127.0.0.1 port; resolves with the port. */
export function listenOnLoopback(server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      const addr = server.address();
      resolve(typeof addr === 'object' && addr ? addr.port : 0);
    });
  });
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

export async function freePort(): Promise<number> {
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

/** @internal Another process's etcd answers on a port one of ours was started on. */
export class PortTakenError extends Error {
  override name = 'PortTakenError';
}

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
    await this.checkIdentity();
  }

  /** Waits (bounded) until this member answers /health with true. */
  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    const notYet = new Error(`member ${this.name} not healthy after ${timeoutMs} ms`);
    await retrying(
      async () => {
        if (await this.healthy()) return;
        if (this.#state === 'stopped')
          throw new Error(`member ${this.name} exited:\n${this.recentLog.split('\n').slice(-10).join('\n')}`);
        throw notYet;
      },
      { maxElapsedMs: timeoutMs, maxBackoffMs: 250, retryIf: (err) => err === notYet },
    );
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
      const res = await this.#overGrpc((c) => c.maintenance.status({ deadline: new Date(Date.now() + timeoutMs) }));
      return { memberId: res.header.member_id, leaderId: res.leader, raftTerm: res.header.raft_term };
    }
    const body = (await requestJson(`${this.clientUrl}/v3/maintenance/status`, { body: '{}', timeoutMs })) as {
      header: { member_id: string; raft_term: string };
      leader: string;
    };
    // etcd's JSON leaves out zero values: no leader field means no leader.
    return { memberId: body.header.member_id, leaderId: body.leader ?? '0', raftTerm: body.header.raft_term };
  }

  /**
   * @internal Throws unless the etcd answering on this member's client port
   * is this member. Ports are probed free, then bound by etcd: another
   * process's etcd can take one in between, and its `/health` answers for a
   * member that is about to exit for want of its port.
   */
  async checkIdentity(timeoutMs = 10_000): Promise<void> {
    type Answer = { header?: { member_id: string }; members?: { ID: string; peerURLs?: string[] }[] };
    const ask = async (): Promise<Answer> =>
      this.#tls
        ? await this.#overGrpc((c) => c.cluster.memberList({}, { deadline: new Date(Date.now() + 2000) }))
        : ((await requestJson(`${this.clientUrl}/v3/cluster/member/list`, { body: '{}', timeoutMs: 2000 })) as Answer);
    // A slow or refusing answer is asked again (bounded); only a member list naming another member is a clash.
    const answer = await retrying(
      async () => {
        const a = await ask();
        if (!a.header || !a.members) throw new Error(`no member list on ${this.endpoint}: ${JSON.stringify(a)}`);
        return a;
      },
      { maxElapsedMs: timeoutMs, maxBackoffMs: 250, retryIf: () => true },
    );
    const self = answer.members!.find((m) => m.ID === answer.header!.member_id);
    const advertised = this.#advertisedPeerUrls();
    if (!self?.peerURLs?.some((url) => advertised.includes(url))) {
      throw new PortTakenError(
        `another etcd answers on ${this.endpoint}: its peer URLs are ${self?.peerURLs?.join(', ')}, ` +
          `${this.name}'s are ${advertised.join(', ')}`,
      );
    }
  }

  /** The peer URLs this member advertises: the last `--initial-advertise-peer-urls` given, as etcd reads it. */
  #advertisedPeerUrls(): string[] {
    const flag = '--initial-advertise-peer-urls';
    for (let i = this.#args.length - 1; i >= 0; i--) {
      const arg = this.#args[i]!;
      const value =
        arg === flag ? this.#args[i + 1] : arg.startsWith(`${flag}=`) ? arg.slice(flag.length + 1) : undefined;
      if (value !== undefined) return value.split(',').map((u) => u.trim());
    }
    return [this.peerUrl];
  }

  /** Runs `ask` through a short-lived gRPC client (etcd's HTTP gateway refuses client certificates once auth is on). */
  async #overGrpc<T>(ask: (client: Etcd3) => Promise<T>): Promise<T> {
    const tls = this.#tls!;
    const client = new Etcd3({
      hosts: [this.endpoint],
      credentials: {
        rootCertificate: tls.ca,
        ...(tls.cert ? { certChain: tls.cert, privateKey: tls.key } : {}),
      },
      grpcOptions: TLS_GRPC_OPTIONS,
      faultHandling: { global: noRetry, host: () => noRetry },
    });
    try {
      return await ask(client);
    } finally {
      client.close();
    }
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
