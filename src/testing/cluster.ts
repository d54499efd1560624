import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3, Range, type IOptions } from 'etcd3';
import { isRoleTaken } from '../core/etcd-errors.js';
import { retrying } from '../core/retry.js';
import { TestCertificateAuthority, type CertificatePair } from './certs.js';
import { findEtcdBinary } from './etcd-binary.js';
import { memberFlags } from './member-flags.js';

import { TLS_GRPC_OPTIONS, type MemberTls, freePort, EtcdMember, PortTakenError } from './member.js';
import { PeerGates } from './peer-gates.js';
import type { EtcdClusterOptions, EtcdCredentials, EtcdGrant, EtcdClusterTls } from './cluster-options.js';

export type { EtcdClusterOptions, EtcdCredentials, EtcdGrant, EtcdClusterTls } from './cluster-options.js';
export { EtcdMember, type MemberState } from './member.js';

function defaultDataRoot(dataDir: EtcdClusterOptions['dataDir']): string {
  if (dataDir && dataDir !== 'disk') return dataDir;
  if (dataDir !== 'disk' && existsSync('/dev/shm')) return '/dev/shm';
  return tmpdir();
}

/** A wait's condition does not hold yet: `retrying` tries again until its time is up. */
class NotYet extends Error {}

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
  readonly #gates: PeerGates | undefined;
  #root: EtcdCredentials | undefined;
  #stopped = false;

  private constructor(
    members: EtcdMember[],
    dataDir: string,
    startTimeoutMs: number,
    authority: TestCertificateAuthority | undefined,
    tls: EtcdClusterTls | undefined,
    gates: PeerGates | undefined,
  ) {
    this.members = members;
    this.#gates = gates;
    this.dataDir = dataDir;
    this.#startTimeoutMs = startTimeoutMs;
    this.#authority = authority;
    this.tls = tls;
  }

  /** Starts a cluster and waits until every member is healthy (and, with `auth`, until auth is on). */
  static async start(options: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    const size = options.members ?? 1;
    if (size !== 1 && size !== 3) throw new RangeError(`members must be 1 or 3, got ${String(size)}`);
    if (options.partitionable && options.tls) throw new RangeError('partitionable cannot be combined with tls');
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
      const gates = options.partitionable
        ? await PeerGates.open(names.map((name, i) => ({ name, peerPort: ports[size + i]! })))
        : undefined;
      // Members reach each other through the gates, when there are any.
      const advertisedPeer = (i: number) => `${scheme}://127.0.0.1:${gates ? gates.ports[i] : ports[size + i]}`;
      const initialCluster = names.map((n, i) => `${n}=${advertisedPeer(i)}`).join(',');
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
          memberFlags({
            name,
            dir,
            scheme,
            client,
            peer,
            advertisedPeer: advertisedPeer(i),
            initialCluster,
            token,
            heartbeatMs,
            electionMs,
            metrics,
            tls,
            extraArgs: options.extraArgs,
          }),
          memberTls,
        );
      });
      const cluster = new EtcdCluster(members, root, startTimeoutMs, authority, tls, gates);
      try {
        await Promise.all(members.map((m) => m.spawn()));
        await cluster.waitHealthy();
        await Promise.all(members.map((m) => m.checkIdentity()));
        if (gates) for (const m of members) gates.learn(m.name, (await m.status()).memberId);
      } catch (err) {
        gates?.close();
        const logs = members.map((m) => `--- ${m.name}\n${m.recentLog.split('\n').slice(-15).join('\n')}`).join('\n');
        await Promise.all(members.map((m) => m.kill()));
        for (const m of members) m.removeData();
        // A port taken between probing and binding: try once more with new ports.
        if (attempt < 3 && (err instanceof PortTakenError || /address already in use|bind/i.test(logs))) continue;
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
        if (!isRoleTaken(err)) throw err;
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
    await retrying(
      async () => {
        const live = this.members.filter((m) => m.state === 'running');
        // Checked first: `every` is true of no member at all.
        if (live.length === 0) throw new Error('no member is running');
        const states = await Promise.all(live.map((m) => m.healthy()));
        if (states.every(Boolean)) return;
        const sick = live.filter((_, i) => !states[i]).map((m) => m.name);
        throw new NotYet(`not healthy after ${timeoutMs} ms (${sick.join(', ')})`);
      },
      { maxElapsedMs: timeoutMs, maxBackoffMs: 250, retryIf: (err) => err instanceof NotYet },
    );
  }

  /**
   * Cuts `isolated` off from the other members (a network partition): the
   * connections between the two sides are reset and new ones refused, in
   * both directions, until {@link EtcdCluster.heal}. Every member stays up
   * and keeps serving its clients; the side without a majority loses its
   * leader after an election timeout. Needs the `partitionable` option.
   * @param isolated - the members of the smaller side (the others keep the majority when fewer than half)
   */
  partition(...isolated: EtcdMember[]): void {
    if (!this.#gates) throw new RangeError('partition() needs a cluster started with { partitionable: true }');
    if (isolated.length === 0 || isolated.some((m) => !this.members.includes(m))) {
      throw new RangeError('isolated must be one or more members of this cluster');
    }
    this.#gates.partition(isolated.map((m) => m.name));
  }

  /** Ends {@link EtcdCluster.partition}: members reconnect on their own. */
  heal(): void {
    this.#gates?.heal();
  }

  /**
   * The member that is Raft leader now, as the running members agree (those
   * cut off by {@link EtcdCluster.partition} are not asked); waits (bounded)
   * while an election is in progress.
   */
  async leader(timeoutMs = 10_000): Promise<EtcdMember> {
    return retrying(
      async () => {
        const isolated = this.#gates?.isolated;
        const live = this.members.filter((m) => m.state === 'running' && !isolated?.has(m.name));
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
        const agreed = leaderId && leaderId !== '0' && ok.every((x) => x.s.leaderId === leaderId);
        const leader = agreed ? ok.find((x) => x.s.memberId === leaderId)?.m : undefined;
        if (!leader) throw new NotYet('no agreed Raft leader');
        return leader;
      },
      { maxElapsedMs: timeoutMs, maxBackoffMs: 50, retryIf: (err) => err instanceof NotYet },
    );
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
    this.#gates?.close();
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  /** `await using etcd = await EtcdCluster.start()` stops it at scope exit. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
