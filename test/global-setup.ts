import { findEtcdBinary, findEtcdctlBinary, EtcdNotFoundError } from '../src/testing/index.js';
import { ensureChromium } from './fixtures/chromium.js';

/**
 * Makes sure etcd (and etcdctl), and Chromium for the dashboard test, exist before any test starts,
 * installing them when allowed.
 */
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
  // The dashboard's browser test needs Chromium; without it that test is skipped, not failed.
  const chromium = ensureChromium();
  if (chromium) process.env.CHROMIUM_BIN = chromium;
}
