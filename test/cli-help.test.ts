import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseDuration } from '../src/cli/args.js';
import { COMMANDS } from '../src/cli/commands.js';
import { resolveConnection } from '../src/cli/connection.js';
import { main } from '../src/cli/main.js';

/** Runs the tool in-process against an endpoint where nothing listens (a usage error must never get that far). */
async function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const code = await main(args, {
    stdout,
    stderr,
    env: { ETCDCTL_ENDPOINTS: '127.0.0.1:1', ...env },
    version: '9.9.9',
  });
  return { code, out, err };
}

describe('etcd-recipes command line', () => {
  it('has --help with a usage line and a copy-paste example for every command', async () => {
    expect(COMMANDS.map((c) => c.name)).toEqual([
      'lock',
      'semaphore',
      'elect',
      'observe',
      'queue',
      'work',
      'register',
      'services',
      'status',
      'dashboard',
    ]);
    for (const c of COMMANDS) {
      const { code, out, err } = await run([c.name, '--help']);
      expect(code, c.name).toBe(0);
      expect(err).toBe('');
      expect(out).toMatch(new RegExp(`^Usage: etcd-recipes ${c.name} `));
      expect(out).toMatch(new RegExp(`Examples?:\\n  etcd-recipes ${c.name} `));
      expect(out).toMatch(/--endpoints LIST/);
      expect(out).toMatch(/Exit codes:/);
      expect((await run(['help', c.name])).out).toBe(out);
    }
    const top = await run(['--help']);
    expect(top.code).toBe(0);
    for (const c of COMMANDS) expect(top.out).toContain(`  ${c.name} `);
    expect(await run(['--version'])).toMatchObject({ code: 0, out: 'etcd-recipes 9.9.9\n' });
    expect((await run([])).code).toBe(64);
  });

  it('gives one line and exit code 64 for a bad command line, before connecting', async () => {
    const cases: [string[], RegExp][] = [
      [['lock', 'a', '--frobnicate', '--', 'true'], /unknown option --frobnicate/],
      [['lock', 'a', '--ttl', '--', 'true'], /--ttl needs a value/],
      [['lock', 'a', '--ttl', 'x', '--', 'true'], /--ttl: "x" is not a duration/],
      [['lock', 'a', '--ttl', '0', '--', 'true'], /--ttl: 0 is out of range/],
      [['lock', 'a', '-E', '300', '--', 'true'], /--conflict-exit-code: must be a whole number from 0 to 255/],
      [['lock', 'a', 'b', '--', 'true'], /unexpected argument "b"/],
      [['lock', '--', 'true'], /missing NAME/],
      [['lock', 'a', '--'], /missing -- CMD/],
      [['semaphore', 'a', '--permits', '0', '--', 'true'], /--permits: must be a whole number from 1 to 10000/],
      [['elect', 'a', '--', 'true'], /missing VALUE/],
      [['elect', 'a', 'v'], /missing -- CMD/],
      [['observe', 'a', '--', 'true'], /runs no command/],
      [['queue', 'q', 'peek'], /unknown queue action "peek"/],
      [['queue', 'q', 'push', 'v', '--timeout', '1'], /push takes no --timeout/],
      [['work', 'w', 'run'], /run needs -- CMD/],
      [['work', 'w', 'add', 'v', '--concurrency', '2'], /--concurrency does not apply to add/],
      [['register', 'a/b', 'id', 'addr', '--', 'true'], /SERVICE must be non-empty without \//],
      [['register', 's', 'id', 'addr', '--meta', 'novalue', '--', 'true'], /--meta: expected K=V/],
      [['services', 's', '--root', 'x'], /--root: must be '' or end with \//],
      [
        ['lock', 'a', '--endpoints', 'not an endpoint', '--', 'true'],
        /--endpoints: "not an endpoint" is not an endpoint/,
      ],
      [['lock', 'a', '--user', 'root', '--', 'true'], /--user: no password/],
      [
        ['lock', 'a', '--cacert', '/nonexistent/ca.pem', '--', 'true'],
        /--cacert: cannot read \/nonexistent\/ca.pem: ENOENT/,
      ],
      [['lock', 'a', '--try', '--try', '--', 'true'], /--try given more than once/],
      [['unknown-command'], /unknown command "unknown-command"/],
    ];
    for (const [args, message] of cases) {
      const { code, out, err } = await run(args);
      expect(code, args.join(' ')).toBe(64);
      expect(out).toBe('');
      expect(err.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(err, args.join(' ')).toMatch(message);
    }
  });

  it('takes connection settings from flags, then ETCDCTL_* and ETCD_ENDPOINTS, then defaults', () => {
    expect(resolveConnection({}, {})).toMatchObject({ endpoints: ['127.0.0.1:2379'], dialTimeoutMs: 2000 });
    expect(resolveConnection({}, { ETCD_ENDPOINTS: 'a:1,b:2' }).endpoints).toEqual(['a:1', 'b:2']);
    expect(resolveConnection({}, { ETCD_ENDPOINTS: 'a:1', ETCDCTL_ENDPOINTS: 'https://c:3' }).endpoints).toEqual([
      'https://c:3',
    ]);
    expect(resolveConnection({ endpoints: 'd:4' }, { ETCDCTL_ENDPOINTS: 'c:3' }).endpoints).toEqual(['d:4']);
    expect(resolveConnection({ user: 'root:se:cret' }, {})).toMatchObject({ user: 'root', password: 'se:cret' });
    expect(resolveConnection({ user: 'root' }, { ETCDCTL_PASSWORD: 'pw' })).toMatchObject({
      user: 'root',
      password: 'pw',
    });
    expect(resolveConnection({}, { ETCDCTL_DIAL_TIMEOUT: '750ms' }).dialTimeoutMs).toBe(750);
    expect(parseDuration('1m30s', 'x')).toBe(90_000);
    expect(parseDuration('2.5', 'x')).toBe(2500);
  });
});
