#!/usr/bin/env node
// The `etcd-recipes` command; everything is in src/cli.
import { readFileSync } from 'node:fs';
import { main } from '../cli/main.js';

function version(): string | undefined {
  // dist/esm/bin/ sits three levels under the package root, src/bin/ two.
  for (const up of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(up, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'etcd-recipes') return pkg.version;
    } catch {
      // Not there: try the next level.
    }
  }
  return undefined;
}

main(process.argv.slice(2), { version: version() }).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`etcd-recipes: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(70);
  },
);
