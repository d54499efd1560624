import { execFile } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useCluster } from './helpers.js';

/*
 * The package as its users get it: `npm pack`, installed from the tarball into
 * a fresh project next to a different patch version of etcd3 than the
 * library's own devDependency, then typechecked (skipLibCheck: false) and run
 * against a real etcd. Needs the npm registry (the same one `npm ci` uses).
 */

const root = fileURLToPath(new URL('..', import.meta.url));
const fixtures = join(root, 'test/fixtures/consumer');
const built = existsSync(join(root, 'dist/esm/index.js')) && existsSync(join(root, 'dist/cjs/index.js'));
const exec = promisify(execFile);
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** The peer the user installs: in our peer range, not the patch we develop against. */
const USER_ETCD3 = '1.1.1';
/** The @types/node floor the README states (typed EventEmitter<T>). */
const TYPES_NODE_FLOOR = '20.11.21';

async function sh(cmd: string, args: string[], cwd: string, timeout = 120_000): Promise<string> {
  try {
    const { stdout } = await exec(cmd, args, {
      cwd,
      timeout,
      maxBuffer: 16 << 20,
      env: { ...process.env, npm_config_update_notifier: 'false' },
    });
    return stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} (in ${cwd}) failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`.slice(0, 6000));
  }
}

const tsconfig = (module: string, moduleResolution: string, files: string[], skipLibCheck = false) =>
  JSON.stringify({
    compilerOptions: {
      strict: true,
      skipLibCheck,
      noEmit: true,
      target: 'ES2022',
      lib: ['ES2022'],
      types: ['node'],
      module,
      moduleResolution,
    },
    files,
  });

const parsedFiles = new Map<string, ts.SourceFile | undefined>();

/**
 * Diagnostics of a project (skipLibCheck: false) restricted to the user's
 * files and etcd-recipes' declarations: options, global, syntactic and
 * semantic. Parsed files are shared between the configurations.
 */
function checkOurFiles(configPath: string): string {
  const parsed = ts.getParsedCommandLineOfConfigFile(
    configPath,
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
      },
    },
  )!;
  const host = ts.createCompilerHost(parsed.options);
  const parse = host.getSourceFile.bind(host);
  host.getSourceFile = (fileName, opts, onError, fresh) => {
    const key = `${fileName}|${typeof opts === 'object' ? `${opts.languageVersion}|${opts.impliedNodeFormat}` : opts}`;
    if (!parsedFiles.has(key)) parsedFiles.set(key, parse(fileName, opts, onError, fresh));
    return parsedFiles.get(key);
  };
  const program = ts.createProgram({ rootNames: parsed.fileNames, options: parsed.options, host });
  const ours = program
    .getSourceFiles()
    .filter((sf) => sf.fileName.includes('/node_modules/etcd-recipes/') || !sf.fileName.includes('/node_modules/'));
  const diagnostics = [
    ...parsed.errors,
    ...program.getOptionsDiagnostics(),
    ...program.getGlobalDiagnostics(),
    ...ours.flatMap((sf) => [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)]),
  ];
  return ts.formatDiagnostics(diagnostics, host);
}

describe.skipIf(!built)('the packed package in a user project', () => {
  const etcd = useCluster();
  let dir = '';
  let tarball = '';
  const latestTsc = () => join(dir, 'node_modules/typescript/bin/tsc');

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'etcd-recipes-consumer-'));
    // --ignore-scripts: `npm test` has just built dist; prepack would build it again.
    const packed = JSON.parse(
      await sh(npm, ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], root),
    ) as { filename: string }[];
    tarball = join(dir, packed[0]!.filename);
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    for (const f of readdirSync(fixtures)) copyFileSync(join(fixtures, f), join(dir, f));
    await sh(
      npm,
      [
        'install',
        '--no-audit',
        '--no-fund',
        '--ignore-scripts',
        tarball,
        `etcd3@${USER_ETCD3}`,
        'typescript@latest',
        '@types/node@20',
      ],
      dir,
    );
    mkdirSync(join(dir, 'floor'));
    writeFileSync(join(dir, 'floor/package.json'), JSON.stringify({ private: true, type: 'module' }));
    await sh(
      npm,
      ['install', '--no-audit', '--no-fund', '--ignore-scripts', `@types/node@${TYPES_NODE_FLOOR}`],
      join(dir, 'floor'),
    );
  }, 180_000);

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("installs next to the user's etcd3 without a second copy of it", () => {
    const etcd3 = JSON.parse(readFileSync(join(dir, 'node_modules/etcd3/package.json'), 'utf8')) as { version: string };
    expect(etcd3.version).toBe(USER_ETCD3);
    expect(existsSync(join(dir, 'node_modules/etcd-recipes/node_modules/etcd3'))).toBe(false);
    expect(existsSync(join(dir, 'node_modules/async-mutex'))).toBe(false);
  });

  it('typechecks with skipLibCheck: false under node16, nodenext and bundler, TypeScript 5.x and latest', async () => {
    const configs: [string, string, string, string[]][] = [
      ['node16', 'node16', 'node16', ['esm.ts', 'cjs.cts']],
      ['nodenext', 'nodenext', 'nodenext', ['esm.ts', 'cjs.cts']],
      ['bundler', 'esnext', 'bundler', ['esm.ts']],
    ];
    for (const [name, module, resolution, files] of configs)
      writeFileSync(join(dir, `tsconfig.${name}.json`), tsconfig(module, resolution, files));
    // node10 is gone from TypeScript 6+; users still on it are on 5.x.
    writeFileSync(join(dir, 'tsconfig.node10.json'), tsconfig('commonjs', 'node10', ['node10.ts']));
    const latest = (await sh(process.execPath, [latestTsc(), '--version'], dir)).trim();
    expect(latest).not.toBe(`Version ${ts.version}`);
    const failures: string[] = [];
    // The latest TypeScript (native, fast): the whole project, as the user's `tsc` would.
    const cli = Promise.all(
      configs.map(async ([name]) => {
        try {
          await sh(process.execPath, [latestTsc(), '-p', `tsconfig.${name}.json`], dir);
        } catch (err) {
          failures.push(`${latest} ${name}: ${(err as Error).message}`);
        }
      }),
    );
    // TypeScript 5.x: the same configurations, checking every file of ours and the user's (checking all of
    // @types/node four times over would take minutes on a busy machine and tells nothing about this package).
    expect(ts.version).toMatch(/^5\./);
    for (const name of [...configs.map(([n]) => n), 'node10']) {
      const problems = checkOurFiles(join(dir, `tsconfig.${name}.json`));
      if (problems) failures.push(`TypeScript ${ts.version} ${name}:\n${problems}`);
    }
    await cli;
    expect(failures).toEqual([]);
  }, 180_000);

  it(`typechecks with @types/node ${TYPES_NODE_FLOOR}, the floor the README states`, async () => {
    writeFileSync(join(dir, 'floor/esm.ts'), readFileSync(join(dir, 'esm.ts')));
    // An @types/node that old predates the TypeScript 5.7 lib changes: only skipLibCheck makes it usable at all.
    writeFileSync(join(dir, 'floor/tsconfig.json'), tsconfig('nodenext', 'nodenext', ['esm.ts'], true));
    expect(checkOurFiles(join(dir, 'floor/tsconfig.json'))).toBe('');
  }, 60_000);

  it('takes a lock against a real etcd from plain JavaScript, with fenced writes', async () => {
    const out = await sh(process.execPath, ['lock.mjs', etcd().endpoints.join(',')], dir, 60_000);
    const result = JSON.parse(out.trim().split('\n').at(-1)!) as { first: string; second: string; state: string };
    expect(BigInt(result.second)).toBeGreaterThan(BigInt(result.first));
    expect(result.state).toBe('fenced');
  }, 90_000);

  it('passes publint (strict) and arethetypeswrong for both entry points', async () => {
    const bin = (name: string) => join(root, 'node_modules/.bin', name);
    const [publint, attw] = await Promise.all([
      sh(bin('publint'), ['run', tarball, '--strict'], dir),
      sh(bin('attw'), [tarball, '--format', 'json'], dir),
    ]);
    expect(publint).toMatch(/All good/);
    const report = JSON.parse(attw) as { analysis: { problems?: unknown[]; entrypoints: Record<string, unknown> } };
    expect(Object.keys(report.analysis.entrypoints).sort()).toEqual(['.', './package.json', './testing']);
    expect(report.analysis.problems ?? []).toEqual([]);
  }, 90_000);
});
