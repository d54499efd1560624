import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const run = (args: string[]) => execFileSync(process.execPath, args, { cwd: root, encoding: 'utf8' }).trim();

function dts(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? dts(p) : p.endsWith('.d.ts') ? [p] : [];
  });
}

// Runs against the built package (npm test builds first), through its own name and exports map.
describe.skipIf(!existsSync(join(root, 'dist/esm/index.js')))('the built package', () => {
  const script = (kind: 'esm' | 'cjs', spec: string) =>
    kind === 'esm'
      ? [
          '--input-type=module',
          '-e',
          `import * as m from '${spec}'; ` +
            "console.log(JSON.stringify(Object.keys(m).filter(k => k !== 'default' && k !== 'module.exports').sort()))",
        ]
      : ['-e', `console.log(JSON.stringify(Object.keys(require('${spec}')).sort()))`];

  it('is importable as ESM and requirable as CJS, with the same exports', () => {
    const esm = JSON.parse(run(script('esm', 'etcd-recipes'))) as string[];
    const cjs = JSON.parse(run(script('cjs', 'etcd-recipes'))) as string[];
    expect(esm).toEqual(cjs);
    for (const name of ['Session', 'Mutex', 'withLock', 'RecipeError', 'isRecipeError', 'SessionExpiredError']) {
      expect(esm).toContain(name);
    }
    const esmTesting = JSON.parse(run(script('esm', 'etcd-recipes/testing'))) as string[];
    const cjsTesting = JSON.parse(run(script('cjs', 'etcd-recipes/testing'))) as string[];
    expect(esmTesting).toEqual(cjsTesting);
    expect(esmTesting).toContain('EtcdCluster');
  });

  it('ships declarations without any, const enum, debug types or @internal members', () => {
    for (const dir of ['dist/esm', 'dist/cjs']) {
      const files = dts(join(root, dir));
      expect(files.length).toBeGreaterThan(5);
      for (const f of files) {
        const text = readFileSync(f, 'utf8');
        expect(text, f).not.toMatch(/\bconst enum\b/);
        expect(text, f).not.toMatch(/:\s*any\b|<any>|any\[\]/);
        // A user's project has no @types/debug; @internal members are not API.
        expect(text, f).not.toMatch(/from ['"]debug['"]|@internal/);
      }
    }
  });
});
