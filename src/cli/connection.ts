import { readFileSync } from 'node:fs';
import type { OptionSpec, OptionValues } from './command.js';
import { parseDuration, stringOption } from './args.js';
import { UsageError } from './exit-codes.js';

/*
 * The connection flags, with etcdctl's names and environment variables, so
 * that a shell already set up for etcdctl works unchanged.
 */

/** Where and how to connect, resolved from flags and the environment. */
export interface ConnectionOptions {
  /** `host:port` or `http(s)://host:port`, at least one. */
  endpoints: string[];
  /** PEM contents of `--cacert`, `--cert` and `--key`. */
  cacert?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** Authentication, when `--user` is given. */
  user?: string;
  password?: string;
  /** How long to wait for etcd to answer the first request, in ms. */
  dialTimeoutMs: number;
}

/** The default endpoint, as etcdctl's. */
const DEFAULT_ENDPOINT = '127.0.0.1:2379';
/** The default dial timeout, as etcdctl's (2 s). */
const DEFAULT_DIAL_TIMEOUT_MS = 2000;

/** The flags every command accepts. */
export const CONNECTION_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  endpoints: {
    type: 'string',
    value: 'LIST',
    help: `comma-separated etcd endpoints (env ETCDCTL_ENDPOINTS or ETCD_ENDPOINTS; default ${DEFAULT_ENDPOINT})`,
  },
  cacert: {
    type: 'string',
    value: 'FILE',
    help: "verify the servers' TLS certificates with this CA bundle (env ETCDCTL_CACERT)",
  },
  cert: { type: 'string', value: 'FILE', help: 'TLS client certificate (env ETCDCTL_CERT)' },
  key: { type: 'string', value: 'FILE', help: 'TLS client key (env ETCDCTL_KEY)' },
  user: { type: 'string', value: 'NAME[:PASSWORD]', help: 'authenticate as this user (env ETCDCTL_USER)' },
  password: { type: 'string', value: 'PASSWORD', help: 'password, if not in --user (env ETCDCTL_PASSWORD)' },
  'dial-timeout': {
    type: 'string',
    value: 'DURATION',
    help: 'give up when etcd does not answer within this long (env ETCDCTL_DIAL_TIMEOUT; default 2s)',
  },
};

const ENDPOINT = /^(https?:\/\/)?(\[[0-9a-fA-F:.]+\]|[^\s/:[\]]+):[0-9]{1,5}\/?$/;

/**
 * Resolves the connection settings: a flag wins over `ETCDCTL_<FLAG>`, which
 * wins over `ETCD_ENDPOINTS` (endpoints only), which wins over the default.
 * Reads the certificate files now, so a bad path is a usage error before
 * anything is sent.
 * @throws UsageError naming the flag
 */
export function resolveConnection(values: OptionValues, env: NodeJS.ProcessEnv = process.env): ConnectionOptions {
  const pick = (flag: string, ...vars: string[]): [string | undefined, string] => {
    const v = stringOption(values, flag);
    if (v !== undefined) return [v, `--${flag}`];
    for (const name of vars) {
      const e = env[name];
      if (e !== undefined && e !== '') return [e, name];
    }
    return [undefined, `--${flag}`];
  };

  const [endpointList = DEFAULT_ENDPOINT, endpointsFrom] = pick('endpoints', 'ETCDCTL_ENDPOINTS', 'ETCD_ENDPOINTS');
  const endpoints = endpointList
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  if (endpoints.length === 0) throw new UsageError(`${endpointsFrom}: no endpoint given`);
  for (const e of endpoints) {
    if (!ENDPOINT.test(e))
      throw new UsageError(
        `${endpointsFrom}: ${JSON.stringify(e)} is not an endpoint like 127.0.0.1:2379 or https://etcd-1:2379`,
      );
  }
  const secure = endpoints.filter((e) => e.startsWith('https://')).length;
  if (secure > 0 && secure < endpoints.length)
    throw new UsageError(`${endpointsFrom}: mixes https:// and plain endpoints`);

  const file = (flag: string, envName: string): Buffer | undefined => {
    const [path, from] = pick(flag, envName);
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      throw new UsageError(
        `${from}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
  };
  const cacert = file('cacert', 'ETCDCTL_CACERT');
  const cert = file('cert', 'ETCDCTL_CERT');
  const key = file('key', 'ETCDCTL_KEY');
  if (!!cert !== !!key) throw new UsageError('--cert and --key go together');

  const [userSpec, userFrom] = pick('user', 'ETCDCTL_USER');
  const [passwordFlag] = pick('password', 'ETCDCTL_PASSWORD');
  let user: string | undefined;
  let password: string | undefined;
  if (userSpec !== undefined) {
    const colon = userSpec.indexOf(':');
    user = colon >= 0 ? userSpec.slice(0, colon) : userSpec;
    password = passwordFlag ?? (colon >= 0 ? userSpec.slice(colon + 1) : undefined);
    if (user === '') throw new UsageError(`${userFrom}: empty user name`);
    // etcdctl would prompt; a tool run from cron or systemd cannot.
    if (password === undefined)
      throw new UsageError(`${userFrom}: no password (give NAME:PASSWORD, --password or ETCDCTL_PASSWORD)`);
  } else if (passwordFlag !== undefined) {
    throw new UsageError('--password needs --user');
  }

  const [dial, dialFrom] = pick('dial-timeout', 'ETCDCTL_DIAL_TIMEOUT');
  const dialTimeoutMs = dial === undefined ? DEFAULT_DIAL_TIMEOUT_MS : parseDuration(dial, dialFrom, { min: 1 });

  return { endpoints, cacert, cert, key, user, password, dialTimeoutMs };
}
