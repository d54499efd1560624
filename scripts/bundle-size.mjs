// Bundles what a user imports from the built package (run `npm run build`
// first) with esbuild, minified, for Node, with etcd3 (a peer) left out, and
// prints one JSON line: bytes per entry (minified, gzipped, and minified
// without `debug`, a dependency an app often has anyway), and which of our
// modules each bundle holds. `npm run size` prints it.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const entries = {
  'Mutex + Session': "export { Mutex, Session } from 'etcd-recipes';",
  'Election + runAsLeader': "export { Election, runAsLeader } from 'etcd-recipes';",
  WorkQueue: "export { WorkQueue } from 'etcd-recipes';",
  everything: "export * from 'etcd-recipes';",
};

const bundle = (contents, external) =>
  build({
    stdin: { contents, resolveDir: root, loader: 'js' },
    bundle: true,
    minify: true,
    write: false,
    metafile: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // Not the repo's tsconfig.json: its paths map etcd-recipes to src for the examples.
    tsconfigRaw: {},
    external,
    logLevel: 'silent',
  });

const out = {};
for (const [name, contents] of Object.entries(entries)) {
  const full = await bundle(contents, ['etcd3']);
  const lean = await bundle(contents, ['etcd3', 'debug']);
  const code = full.outputFiles[0].contents;
  const inputs = Object.values(lean.metafile.outputs)[0].inputs;
  out[name] = {
    minified: code.length,
    gzipped: gzipSync(code).length,
    minifiedWithoutDebug: lean.outputFiles[0].contents.length,
    modules: Object.entries(inputs)
      .filter(([, i]) => i.bytesInOutput > 0)
      .map(([f]) => f.replace(/^dist\/esm\//, ''))
      .sort(),
  };
}
console.log(JSON.stringify(out));
