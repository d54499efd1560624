import type { CertificatePair } from './certs.js';
import { findEtcdBinary } from './etcd-binary.js';

import type { EtcdMember } from './member.js';

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
   * Route each member's peer traffic through a gate in this process, so
   * that {@link EtcdCluster.partition} can cut members off from the others
   * while they stay up and keep serving their clients (a network
   * partition, not a crash or a freeze). Not with `tls`: the gates read the
   * sender's name in etcd's plaintext peer requests.
   */
  partitionable?: boolean;
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
