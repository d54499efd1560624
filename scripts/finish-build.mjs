// Marks each build directory with its module type, so Node loads dist/esm as
// ESM and dist/cjs as CommonJS whatever the root package.json says. Bundlers
// read `sideEffects` from the nearest package.json too, so it is repeated here.
import { chmodSync, writeFileSync } from 'node:fs';
writeFileSync('dist/esm/package.json', `${JSON.stringify({ type: 'module', sideEffects: false })}\n`);
writeFileSync('dist/cjs/package.json', `${JSON.stringify({ type: 'commonjs', sideEffects: false })}\n`);
// The command-line tool (ESM only): executable, so it also runs from a checkout or an unpacked tarball.
chmodSync('dist/esm/bin/etcd-recipes.js', 0o755);
