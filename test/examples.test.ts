import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { EtcdCluster } from '../src/testing/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));
// Every runnable example, and the demo; etcd.ts and demo-worker.ts are helpers the others start.
const examples = readdirSync(new URL('../examples/', import.meta.url))
  .filter((f) => f.endsWith('.ts') && f !== 'etcd.ts' && f !== 'demo-worker.ts')
  .sort();

function run(file: string, endpoints: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', `examples/${file}`], {
      cwd: root,
      env: { ...process.env, ETCD_ENDPOINTS: endpoints },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => {
      output = (output + d.toString()).slice(-4000);
    });
    child.stderr.on('data', (d: Buffer) => {
      output = (output + d.toString()).slice(-4000);
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

// The examples are documentation: they must keep running as the library changes.
describe('examples', () => {
  it('import the library as its users do: from etcd-recipes, never from ../src', () => {
    for (const file of readdirSync(new URL('../examples/', import.meta.url)).filter((f) => f.endsWith('.ts'))) {
      const text = readFileSync(new URL(`../examples/${file}`, import.meta.url), 'utf8');
      expect(text, file).not.toMatch(/from '\.\.\/|import\('\.\.\//);
      // etcd.ts (the throwaway cluster) and demo.ts (which starts demo-worker.ts) use the library only through others.
      if (file !== 'etcd.ts' && file !== 'demo.ts') expect(text, file).toMatch(/from 'etcd-recipes'/);
    }
  });

  it(`run to completion against a real etcd (${examples.join(', ')})`, async () => {
    expect(examples.length).toBeGreaterThanOrEqual(10);
    const failures: string[] = [];
    const queue = examples.slice();
    // Three at a time: each is a separate Node process, with an etcd of its own. Examples use plain names
    // (elections/scheduler, accounts/, jobs/): on a shared etcd, two running at once would meet in them.
    await Promise.all(
      Array.from({ length: 3 }, async () => {
        for (let file = queue.shift(); file; file = queue.shift()) {
          await using etcd = await EtcdCluster.start();
          const { code, output } = await run(file, etcd.endpoints.join(','));
          if (code !== 0) failures.push(`${file} exited with ${code}:\n${output}`);
        }
      }),
    );
    expect(failures).toEqual([]);
  }, 240_000);
});
