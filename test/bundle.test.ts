import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const built = existsSync(new URL('../dist/esm/index.js', import.meta.url));
const node = async (args: string[]) =>
  (await promisify(execFile)(process.execPath, args, { cwd: root, timeout: 60_000 })).stdout.trim();

interface Size {
  minified: number;
  gzipped: number;
  minifiedWithoutDebug: number;
  modules: string[];
}

// Runs against the built package (npm test builds first).
describe.skipIf(!built)('loading the package', () => {
  it('bundles `import { Mutex, Session }` without the code of the other recipes (sideEffects: false)', async () => {
    const sizes = JSON.parse(await node(['scripts/bundle-size.mjs'])) as Record<string, Size>;
    const recipes = (s: Size) => s.modules.filter((m) => m.startsWith('recipes/'));
    // The Mutex and the lock-object helper it shares with RWMutex; no other recipe.
    expect(recipes(sizes['Mutex + Session']!)).toEqual(['recipes/locks/mutex.js', 'recipes/locks/object-hold.js']);
    const workQueue = recipes(sizes.WorkQueue!);
    expect(workQueue).toContain('recipes/queues/work-queue.js');
    // Only the work queue's own modules: no Queue, PriorityQueue or other family.
    expect(workQueue.filter((m) => !/^recipes\/queues\/(work-queue|create-item)\b/.test(m))).toEqual([]);
    expect(recipes(sizes.everything!).length).toBeGreaterThanOrEqual(14);
    expect(sizes['Mutex + Session']!.minifiedWithoutDebug).toBeLessThan(sizes.everything!.minifiedWithoutDebug / 2);
  }, 60_000);

  // `sideEffects: false` tells bundlers they may drop any module nobody uses; that is only true if importing
  // one changes nothing. Both builds are imported after etcd3 (whose own loading is not ours to judge).
  it('has no side effect in fact: importing it adds no global, listener, timer or handle', async () => {
    const probe = `
      const snapshot = () => ({
        globals: [...Object.getOwnPropertyNames(globalThis), ...Object.getOwnPropertySymbols(globalThis).map(String)]
          .sort(),
        listeners: ['exit', 'beforeExit', 'SIGINT', 'SIGTERM', 'uncaughtException', 'unhandledRejection', 'warning']
          .map((e) => process.listenerCount(e)),
        resources: process.getActiveResourcesInfo().sort(),
      });
      await import('etcd3');
      const before = snapshot();
      const esm = await import('etcd-recipes');
      const cjs = (await import('node:module')).createRequire(import.meta.url)('etcd-recipes');
      await import('etcd-recipes/testing');
      const after = snapshot();
      const loaded = typeof esm.Mutex === 'function' && typeof cjs.Mutex === 'function';
      console.log(JSON.stringify({ before, after, loaded }));`;
    const { before, after, loaded } = JSON.parse(await node(['--input-type=module', '-e', probe])) as {
      before: unknown;
      after: unknown;
      loaded: boolean;
    };
    expect(loaded).toBe(true);
    expect(after).toEqual(before);
  }, 60_000);
});
