import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, type IOptions } from 'etcd3';
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
  timing?: 'fast' | 'default' | {
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

/** One etcd process of an {@link EtcdCluster}. */
export class EtcdMember {
  /** Member name, `m0`, `m1`, ... */
  readonly name: string;
  /** `127.0.0.1:<port>`: what etcd3's `hosts` option takes. */
  readonly endpoint: string;
  /** `http://127.0.0.1:<port>` */
  readonly clientUrl: string;
  /** `http://127.0.0.1:<port>`: where the other members reach it. */
  readonly peerUrl: string;
  /** This member's data directory. */
  readonly dataDir: string;
  #args: string[];
  #bin: string;
  #wrapper: ChildProcess | undefined;
  #pid: number | undefined;
  #state: MemberState = 'stopped';
  #exited: Promise<number | null> = Promise.resolve(null);
  #log: string[] = [];

  /** Made by {@link EtcdCluster.start}; not meant to be called directly. */
  constructor(bin: string, name: string, clientPort: number, peerPort: number, dataDir: string, args: string[]) {
    this.#bin = bin;
    this.name = name;
    this.endpoint = `127.0.0.1:${clientPort}`;
    this.clientUrl = `http://127.0.0.1:${clientPort}`;
    this.peerUrl = `http://127.0.0.1:${peerPort}`;
    this.dataDir = dataDir;
    this.#args = args;
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
    const child = spawn('sh', ['-c', WRAPPER, 'etcd-wrapper', this.#bin, ...this.#args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#wrapper = child;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.#log.push(...chunk.split('\n').filter(Boolean));
      if (this.#log.length > 200) this.#log.splice(0, this.#log.length - 200);
    });
    child.stdin!.on('error', () => undefined);
    let exitCode: (code: number | null) => void = () => undefined;
    this.#exited = new Promise((resolve) => { exitCode = resolve; });
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
      if (this.#state === 'stopped') throw new Error(`member ${this.name} exited:\n${this.recentLog.split('\n').slice(-10).join('\n')}`);
      if (performance.now() + pause > deadline) throw new Error(`member ${this.name} not healthy after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, 250);
    }
  }

  /** GET /health once: true when the member is up and sees a leader. */
  async healthy(timeoutMs = 1000): Promise<boolean> {
    if (this.#state !== 'running') return false;
    try {
      const res = await fetch(`${this.clientUrl}/health`, { signal: AbortSignal.timeout(timeoutMs) });
      const body = await res.json() as { health?: string };
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
    const res = await fetch(`${this.clientUrl}/v3/maintenance/status`, {
      method: 'POST', body: '{}', signal: AbortSignal.timeout(timeoutMs),
    });
    const body = await res.json() as { header: { member_id: string; raft_term: string }; leader: string };
    return { memberId: body.header.member_id, leaderId: body.leader, raftTerm: body.header.raft_term };
  }

  /** @internal */
  removeData(): void {
    rmSync(this.dataDir, { recursive: true, force: true });
  }
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
  readonly #clients = new Set<Etcd3>();
  readonly #startTimeoutMs: number;
  #stopped = false;

  private constructor(members: EtcdMember[], dataDir: string, startTimeoutMs: number) {
    this.members = members;
    this.dataDir = dataDir;
    this.#startTimeoutMs = startTimeoutMs;
  }

  /** Starts a cluster and waits until every member is healthy. */
  static async start(options: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    const size = options.members ?? 1;
    if (size !== 1 && size !== 3) throw new RangeError(`members must be 1 or 3, got ${String(size)}`);
    const bin = options.etcdBin ?? findEtcdBinary({ install: options.install });
    const timing = options.timing ?? 'fast';
    const { heartbeatMs, electionMs } = timing === 'fast' ? { heartbeatMs: 25, electionMs: 250 }
      : timing === 'default' ? { heartbeatMs: 100, electionMs: 1000 } : timing;
    const root = join(defaultDataRoot(options.dataDir), `etcd-recipes-${process.pid}-${randomBytes(4).toString('hex')}`);
    mkdirSync(root, { recursive: true });
    const startTimeoutMs = options.startTimeoutMs ?? 30_000;

    for (let attempt = 1; ; attempt++) {
      const ports: number[] = [];
      while (ports.length < size * 2) {
        const p = await freePort();
        if (!ports.includes(p)) ports.push(p);
      }
      const names = Array.from({ length: size }, (_, i) => `m${i}`);
      const initialCluster = names.map((n, i) => `${n}=http://127.0.0.1:${ports[size + i]}`).join(',');
      const token = `etcd-recipes-${randomBytes(6).toString('hex')}`;
      const members = names.map((name, i) => {
        const client = ports[i]!;
        const peer = ports[size + i]!;
        const dir = join(root, `${name}-${attempt}`);
        return new EtcdMember(bin, name, client, peer, dir, [
          '--name', name,
          '--data-dir', dir,
          '--listen-client-urls', `http://127.0.0.1:${client}`,
          '--advertise-client-urls', `http://127.0.0.1:${client}`,
          '--listen-peer-urls', `http://127.0.0.1:${peer}`,
          '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
          '--initial-cluster', initialCluster,
          '--initial-cluster-state', 'new',
          '--initial-cluster-token', token,
          '--heartbeat-interval', String(heartbeatMs),
          '--election-timeout', String(electionMs),
          '--logger', 'zap',
          '--log-outputs', 'stderr',
          '--log-level', 'warn',
          ...(options.extraArgs ?? []),
        ]);
      });
      const cluster = new EtcdCluster(members, root, startTimeoutMs);
      try {
        await Promise.all(members.map((m) => m.spawn()));
        await cluster.waitHealthy();
        return cluster;
      } catch (err) {
        const logs = members.map((m) => `--- ${m.name}\n${m.recentLog.split('\n').slice(-15).join('\n')}`).join('\n');
        await Promise.all(members.map((m) => m.kill()));
        members.forEach((m) => m.removeData());
        // A port taken between probing and binding: try once more with new ports.
        if (attempt < 3 && /address already in use|bind/i.test(logs)) continue;
        rmSync(root, { recursive: true, force: true });
        throw new Error(`etcd cluster did not start: ${(err as Error).message}\n${logs}`);
      }
    }
  }

  /** Client endpoints of every member, `127.0.0.1:<port>`. */
  get endpoints(): string[] {
    return this.members.map((m) => m.endpoint);
  }

  /**
   * A new etcd3 client for this cluster (all members unless `hosts` is
   * given), closed by {@link EtcdCluster.stop}.
   */
  client(options: Partial<IOptions> = {}): Etcd3 {
    const client = new Etcd3({ ...options, hosts: options.hosts ?? this.endpoints });
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
        throw new Error(`not healthy after ${timeoutMs} ms (${live.filter((_, i) => !states[i]).map((m) => m.name).join(', ')})`);
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
      const statuses = await Promise.all(live.map((m) => m.status(500).then((s) => ({ m, s }), () => undefined)));
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
