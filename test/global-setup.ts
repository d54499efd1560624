import { findEtcdBinary, findEtcdctlBinary, EtcdNotFoundError } from '../src/testing/index.js';

/** Makes sure etcd (and etcdctl) exist before any test starts, installing them when allowed. */
export default function setup(): void {
  try {
    // Validates ETCD_BIN / ETCDCTL_BIN when set, else finds (or installs) the binaries.
    process.env.ETCD_BIN = findEtcdBinary({ install: true });
    process.env.ETCDCTL_BIN = findEtcdctlBinary({ install: true });
  } catch (err) {
    if (err instanceof EtcdNotFoundError) {
      // One clear line, not a stack trace.
      console.error(`\n${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
}
