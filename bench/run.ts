import { setMaxListeners } from 'node:events';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { withBenchEtcd, type Benchmark } from './lib.js';

/*
 * npm run bench [-- <name> [--shm] [--profile]]
 * Runs bench/<name>.ts (all of them when no name is given) against a fresh
 * etcd with data on disk (or /dev/shm with --shm, or ETCD_ENDPOINTS).
 * --profile records CPU profiles of the STM and work-queue worker processes
 * (bench/profiles/, git-ignored) and prints their top costs.
 */
// tsx turns source maps on; a user's compiled build runs without them (they make every
// stack trace grpc-js formats cost a source-map lookup, which would inflate client CPU).
process.setSourceMapsEnabled(false);
// Hundreds of recipe objects share a session's or a client's signal in the scale runs; that is no leak.
setMaxListeners(10_000);

const dir = fileURLToPath(new URL('.', import.meta.url));
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && !['run.ts', 'lib.ts'].includes(f))
  .map((f) => f.slice(0, -3))
  .sort();
const args = process.argv.slice(2);
const names = args.filter((a) => !a.startsWith('--'));
const chosen = names.length ? names : available;
for (const name of chosen) {
  if (!available.includes(name)) {
    console.error(`unknown benchmark "${name}"; available: ${available.join(', ')}`);
    process.exit(2);
  }
}
for (const name of chosen) {
  console.log(`\n## ${name}\n`);
  const mod = (await import(`./${name}.ts`)) as { default: Benchmark };
  await withBenchEtcd(args, (ctx) => mod.default({ ...ctx, args: args.filter((a) => a !== name) }));
}
process.exit(0);
