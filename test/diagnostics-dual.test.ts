import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { useCluster } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));

// The ESM and the CJS build loaded side by side in one process (npm test builds first): recipes of
// one copy are seen by the metrics of the other, because channels are process-wide by name.
describe.skipIf(!existsSync(join(root, 'dist/cjs/index.js')))('channels across the ESM and CJS copies', () => {
  const etcd = useCluster();

  it('a RecipeMetrics of the CJS copy counts a lock taken through the ESM copy', async () => {
    const script = `
      import { createRequire } from 'node:module';
      import { Etcd3 } from 'etcd3';
      import { Mutex, Session } from 'etcd-recipes';
      const { RecipeMetrics } = createRequire(import.meta.url)('etcd-recipes');
      const metrics = new RecipeMetrics();
      const client = new Etcd3({ hosts: process.env.ENDPOINTS.split(',') });
      const session = await Session.create(client, { ttl: 10 });
      const held = await new Mutex(session, 'dual/lock').acquire();
      await held.release();
      await session.close();
      client.close();
      console.log(JSON.stringify({
        waits: metrics.value('etcd_recipes.lock.wait.duration', { 'etcd_recipes.outcome': 'acquired' }),
        holds: metrics.value('etcd_recipes.lock.hold.duration'),
        sessions: metrics.value('etcd_recipes.session.created'),
      }));
      metrics.close();`;
    const out = await new Promise<string>((resolve, reject) => {
      execFile(
        process.execPath,
        ['--input-type=module', '-e', script],
        {
          cwd: root,
          env: { ...process.env, ENDPOINTS: etcd().endpoints.join(',') },
          timeout: 60_000,
        },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
      );
    });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ waits: 1, holds: 1, sessions: 1 });
  }, 90_000);
});
