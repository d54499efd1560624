import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';

/** Thrown when no etcd binary can be found or installed; its message is one line saying what to do. */
export class EtcdNotFoundError extends Error {
  /** @param what - the missing binary; @param detail - why the usual places did not work */
  constructor(what: 'etcd' | 'etcdctl', detail = '') {
    super(
      `${what} not found${detail ? ` (${detail})` : ''}: ` +
        'install it with `sudo apt-get install etcd-server etcd-client` ' +
        `(Debian/Ubuntu), or set ${what === 'etcd' ? 'ETCD_BIN' : 'ETCDCTL_BIN'}=/path/to/${what}`,
    );
    this.name = 'EtcdNotFoundError';
  }
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** @internal An executable named `name` on PATH or in the usual bin directories. */
export function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  for (const dir of ['/usr/bin', '/usr/local/bin', '/usr/sbin']) {
    const candidate = join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** @internal Root on Linux with apt-get. */
export function canInstallWithApt(): boolean {
  return (
    process.platform === 'linux' &&
    typeof process.getuid === 'function' &&
    process.getuid() === 0 &&
    existsSync('/usr/bin/apt-get')
  );
}

const installAttempted = new Set<string>();

/** @internal Installs Debian packages (once per set per process); default etcd's. */
export function installWithApt(packages: string[] = ['etcd-server', 'etcd-client']): void {
  const what = packages.join(' ');
  if (installAttempted.has(what)) return;
  installAttempted.add(what);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  process.stderr.write(`etcd-recipes: installing missing Debian packages ${what}...\n`);
  // One attempt straight away (fast when the package lists are fresh), then with an update.
  const quick = spawnSync('apt-get', ['install', '-y', '-qq', ...packages], { env, stdio: 'ignore' });
  if (quick.status === 0) return;
  execFileSync('apt-get', ['update', '-qq'], { env, stdio: 'ignore' });
  execFileSync('apt-get', ['install', '-y', '-qq', ...packages], { env, stdio: 'ignore' });
}

/** Options of {@link findEtcdBinary}. */
export interface FindEtcdOptions {
  /** Install Debian's etcd-server and etcd-client with apt-get when missing and running as root. Default false. */
  install?: boolean;
}

function find(what: 'etcd' | 'etcdctl', envVar: string, options: FindEtcdOptions): string {
  const fromEnv = process.env[envVar];
  if (fromEnv) {
    if (isExecutable(fromEnv)) return fromEnv;
    throw new EtcdNotFoundError(what, `${envVar}=${fromEnv} is not an executable file`);
  }
  // etcdctl usually sits next to an ETCD_BIN given explicitly.
  if (what === 'etcdctl' && process.env.ETCD_BIN) {
    const sibling = join(dirname(process.env.ETCD_BIN), 'etcdctl');
    if (isExecutable(sibling)) return sibling;
  }
  const found = onPath(what);
  if (found) return found;
  if (options.install && canInstallWithApt()) {
    try {
      installWithApt();
    } catch (err) {
      throw new EtcdNotFoundError(what, `apt-get install failed: ${(err as Error).message.split('\n')[0]}`);
    }
    const installed = onPath(what);
    if (installed) return installed;
  }
  throw new EtcdNotFoundError(what);
}

/**
 * The etcd server binary: `ETCD_BIN`, else `etcd` on PATH, else (with
 * `install` and root) Debian's package is installed. Throws
 * {@link EtcdNotFoundError} otherwise.
 */
export function findEtcdBinary(options: FindEtcdOptions = {}): string {
  return find('etcd', 'ETCD_BIN', options);
}

/** The etcdctl binary: `ETCDCTL_BIN`, next to `ETCD_BIN`, or on PATH (installing as {@link findEtcdBinary} does). */
export function findEtcdctlBinary(options: FindEtcdOptions = {}): string {
  return find('etcdctl', 'ETCDCTL_BIN', options);
}
