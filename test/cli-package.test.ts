import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { projectRoot } from './cli-helpers.js';
import { useCluster } from './helpers.js';

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** Runs `command` in `cwd` and resolves with its exit code and output. */
function run(
  cwd: string,
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

// Packs the built package (npm test builds first) without re-running the build, installs the
// tarball into a fresh project (dependencies from the npm registry or its cache), and runs the CLI there.
describe.skipIf(!existsSync(join(projectRoot, 'dist/esm/bin/etcd-recipes.js')))(
  'the CLI from the packed tarball',
  () => {
    const cluster = useCluster();
    const dir = mkdtempSync(join(tmpdir(), 'etcd-recipes-pack-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('installs as a bin and runs lock, queue and work with npx', async () => {
      const packed = JSON.parse(
        execFileSync(npm, ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], {
          cwd: projectRoot,
          encoding: 'utf8',
        }),
      ) as { filename: string; files: { path: string; mode: number }[] }[];
      const bin = packed[0]!.files.find((f) => f.path === 'dist/esm/bin/etcd-recipes.js');
      expect(bin).toBeDefined();
      expect(bin!.mode & 0o111).not.toBe(0);

      const project = join(dir, 'project');
      mkdirSync(project);
      writeFileSync(
        join(project, 'package.json'),
        JSON.stringify({ name: 'cli-smoke', version: '1.0.0', private: true }),
      );
      const install = await run(project, npm, [
        'install',
        '--no-audit',
        '--no-fund',
        '--prefer-offline',
        join(dir, packed[0]!.filename),
      ]);
      expect(install.code, install.stderr).toBe(0);
      const pkg = JSON.parse(readFileSync(join(project, 'node_modules/etcd-recipes/package.json'), 'utf8')) as {
        version: string;
      };
      expect(readFileSync(join(project, 'node_modules/.bin/etcd-recipes'), 'utf8')).toMatch(
        /^#!\/usr\/bin\/env node\n/,
      );

      const env = { ETCDCTL_ENDPOINTS: cluster().endpoints.join(',') };
      const npx = (...args: string[]) => run(project, 'npx', ['--no-install', 'etcd-recipes', ...args], env);
      expect((await npx('--version')).stdout).toBe(`etcd-recipes ${pkg.version}\n`);
      const help = await npx('work', '--help');
      expect(help.code).toBe(0);
      expect(help.stdout).toMatch(/Example/);

      const locked = await npx('lock', 'pkg/lock', '--', 'sh', '-c', 'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV"; exit 5');
      expect(locked.code, locked.stderr).toBe(5);
      expect(locked.stdout).toMatch(/^pkg\/lock\/[0-9a-f]+ [0-9]+\n$/);

      expect((await npx('queue', 'pkg/q', 'push', 'hello')).code).toBe(0);
      expect(await npx('queue', 'pkg/q', 'pop')).toMatchObject({ code: 0, stdout: 'hello\n' });

      expect((await npx('work', 'pkg/w', 'add', 'job-1')).code).toBe(0);
      const stats = await npx('work', 'pkg/w', 'stats', '--json');
      expect(JSON.parse(stats.stdout)).toMatchObject({ jobs: 1, dead: 0 });

      // The bin runs directly too (shebang and executable bit).
      const direct = await run(
        project,
        join(project, 'node_modules/.bin/etcd-recipes'),
        ['lock', '--try', 'pkg/lock', '--', 'true'],
        env,
      );
      expect(direct.code, direct.stderr).toBe(0);
    }, 240_000);
  },
);
