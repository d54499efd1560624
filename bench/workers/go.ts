import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { epochMs, WARM_UP_SECONDS } from '../lib.js';

/*
 * Go programs under bench/go/, built at bench time against Debian's
 * golang-etcd-server-dev (etcd 3.4's own clientv3) in GOPATH mode, offline,
 * into bench/go-build/ (git-ignored). When Go or the etcd sources are
 * missing, build() says why and the caller skips its Go rows.
 */

const goDir = fileURLToPath(new URL('../go/', import.meta.url));
const outDir = fileURLToPath(new URL('../go-build/', import.meta.url));

/** Builds bench/go/<name>; returns the binary's path, or a reason why not. */
export function buildGo(name: string): { path: string } | { skipped: string } {
  const env = {
    ...process.env,
    GO111MODULE: 'off',
    GOPATH: `${outDir}gopath:/usr/share/gocode`,
    GOCACHE: `${outDir}cache`,
    GOFLAGS: '',
  };
  const version = spawnSync('go', ['version'], { encoding: 'utf8', env });
  if (version.error || version.status !== 0)
    return { skipped: 'Go is not installed (apt-get install golang-go golang-etcd-server-dev)' };
  const path = `${outDir}${name}`;
  const built = spawnSync('go', ['build', '-o', path, '.'], { cwd: `${goDir}${name}`, encoding: 'utf8', env });
  if (built.status !== 0)
    return {
      skipped:
        'go build failed (is golang-etcd-server-dev installed?): ' +
        built.stderr.trim().split('\n').slice(-3).join(' '),
    };
  return { path: `${path}` };
}

/**
 * A Go benchmark process speaking the line protocol of bench/go/: it prints
 * "ready" once connected; "run <deadline epoch ms>" answers one JSON line.
 */
export class GoProcess {
  private readonly lines: Interface;
  private readonly waiting: ((line: string) => void)[] = [];
  private readonly exited: Promise<void>;

  private constructor(private readonly child: ChildProcess) {
    this.lines = createInterface({ input: child.stdout! });
    this.lines.on('line', (line) => this.waiting.shift()?.(line));
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    child.once('exit', () => {
      for (const w of this.waiting.splice(0)) w('exited');
    });
  }

  static async start(path: string, args: string[]): Promise<GoProcess> {
    const p = new GoProcess(spawn(path, args, { stdio: ['pipe', 'pipe', 'inherit'] }));
    const first = await p.next();
    if (first !== 'ready') {
      await p.close();
      throw new Error(`${path} did not start: ${first}`);
    }
    // Warmed up like the Node worker groups, so both sides are measured alike.
    if (WARM_UP_SECONDS > 0) await p.run(WARM_UP_SECONDS);
    return p;
  }

  private next(): Promise<string> {
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Runs until `seconds` from now; the program's JSON report and the elapsed seconds. */
  async run<T>(seconds: number): Promise<{ report: T; elapsed: number }> {
    const started = epochMs();
    const endAt = started + seconds * 1000;
    const answer = this.next();
    this.child.stdin!.write(`run ${endAt}\n`);
    const line = await answer;
    return { report: JSON.parse(line) as T, elapsed: (endAt - started) / 1000 };
  }

  async close(): Promise<void> {
    if (this.child.exitCode === null) this.child.stdin!.end('quit\n');
    const timer = setTimeout(() => this.child.kill(), 10_000);
    await this.exited;
    clearTimeout(timer);
    this.lines.close();
  }
}
