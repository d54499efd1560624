import { describe, expect, it } from 'vitest';
import { cli, etcdctl, gatedChild, openGate, tempDir } from './cli-helpers.js';
import { keysUnder, useCluster, waitForKeyCount, waitForPrefixEmpty, within } from './helpers.js';

const LOST = 79;
const NOT_ACQUIRED = 75;

describe('etcd-recipes lock', () => {
  const cluster = useCluster();
  const dir = tempDir();
  const ep = () => cluster().endpoints;

  it('excludes etcdctl lock on the same name, both ways', async () => {
    const client = cluster().client();
    // etcdctl holds; our lock waits, and its child starts only after etcdctl's child ended.
    const ctl = etcdctl(ep(), ['lock', 'x/a', '--', ...gatedChild(dir, 'ctl1')]);
    await ctl.waitFor(/^start ctl1/);
    const ours = cli(ep(), ['lock', 'x/a', '--', ...gatedChild(dir, 'ours1')]);
    await waitForKeyCount(client, 'x/a/', 2);
    expect(ours.stdout).toEqual([]);
    await openGate(dir, 'ctl1');
    expect(await ctl.exited).toBe(0);
    await ours.waitFor(/^start ours1/);
    expect(ctl.stdout).toContain('end ctl1');

    // We hold; etcdctl lock waits until our child ended and we released.
    const ctl2 = etcdctl(ep(), ['lock', 'x/a', '--', ...gatedChild(dir, 'ctl2')]);
    await waitForKeyCount(client, 'x/a/', 2);
    expect(ctl2.stdout).toEqual([]);
    await openGate(dir, 'ours1');
    expect(await ours.exited).toBe(0);
    await ctl2.waitFor(/^start ctl2/);
    await openGate(dir, 'ctl2');
    expect(await ctl2.exited).toBe(0);
    await waitForPrefixEmpty(client, 'x/a/');
  });

  it('runs two children strictly one after the other, the second with a larger fencing token', async () => {
    const client = cluster().client();
    const env = (label: string) => [
      'sh',
      '-c',
      `echo "env ${label} $ETCD_RECIPES_KEY $ETCD_RECIPES_FENCING_TOKEN $ETCD_LOCK_KEY $ETCD_LOCK_REV"; exec "$@"`,
      'sh',
      ...gatedChild(dir, label),
    ];
    const first = cli(ep(), ['lock', 'x/b', '--', ...env('b1')]);
    await first.waitFor(/^start b1/);
    const second = cli(ep(), ['lock', 'x/b', '--', ...env('b2')]);
    await waitForKeyCount(client, 'x/b/', 2);
    expect(second.stdout).toEqual([]);
    await openGate(dir, 'b1');
    await second.waitFor(/^start b2/);
    // 'close' of the first came before the second's start: its child ended and it released first.
    expect(await first.exited).toBe(0);
    await openGate(dir, 'b2');
    expect(await second.exited).toBe(0);

    const [, key1, token1, lockKey1, lockRev1] = first.stdout
      .find((l) => l.startsWith('env b1'))!
      .split(' ')
      .slice(1);
    const [, key2, token2, lockKey2, lockRev2] = second.stdout
      .find((l) => l.startsWith('env b2'))!
      .split(' ')
      .slice(1);
    expect(key1).toMatch(/^x\/b\/[0-9a-f]+$/);
    expect(lockKey1).toBe(key1);
    expect(lockRev1).toBe(token1);
    expect(lockKey2).toBe(key2);
    expect(lockRev2).toBe(token2);
    expect(BigInt(token2!)).toBeGreaterThan(BigInt(token1!));
    expect(first.stdout).toEqual([
      expect.stringMatching(/^env b1/),
      expect.stringMatching(new RegExp(`^start b1 ${token1} [0-9]+$`)),
      'end b1',
    ]);
    expect(await keysUnder(client, 'x/b/')).toEqual([]);
  });

  it('terminates the child within 1 s when the lock key is deleted with etcdctl del, and exits "lost"', async () => {
    const client = cluster().client();
    const tool = cli(ep(), ['lock', 'x/c', '--kill-after', '5', '--', ...gatedChild(dir, 'c1')]);
    await tool.waitFor(/^start c1/);
    const [key] = await keysUnder(client, 'x/c/');
    const deleting = performance.now();
    const del = etcdctl(ep(), ['del', key!]);
    expect(await del.exited).toBe(0);
    await tool.waitFor(/^term c1/);
    const terminatedAfter = performance.now() - deleting;
    expect(await tool.exited).toBe(LOST);
    expect(terminatedAfter).toBeLessThan(1000);
    expect(tool.stderr.join('\n')).toMatch(/lost .*deleted/);
    expect(await keysUnder(client, 'x/c/')).toEqual([]);
  });

  it('kills a child that ignores SIGTERM after --kill-after', async () => {
    const client = cluster().client();
    const tool = cli(ep(), [
      'lock',
      'x/k',
      '--kill-after',
      '0.3',
      '--',
      ...gatedChild(dir, 'k1', { ignoreTerm: true }),
    ]);
    await tool.waitFor(/^start k1/);
    const [key] = await keysUnder(client, 'x/k/');
    expect(await etcdctl(ep(), ['del', key!]).exited).toBe(0);
    await tool.waitFor(/^ignored k1/);
    expect(await within(10_000, tool.exited)).toBe(LOST);
  });

  it('forwards SIGTERM to the child and releases the lock: no key is left', async () => {
    const client = cluster().client();
    const tool = cli(ep(), ['lock', 'x/d', '--', ...gatedChild(dir, 'd1')]);
    await tool.waitFor(/^start d1/);
    expect(await keysUnder(client, 'x/d/')).toHaveLength(1);
    tool.kill('SIGTERM');
    await tool.waitFor(/^term d1/);
    // The child trapped SIGTERM and exited 0: that is the tool's code.
    expect(await tool.exited).toBe(0);
    expect(await keysUnder(client, '')).not.toContainEqual(expect.stringMatching(/^x\/d\//));
  });

  it('SIGTERM while waiting gives up the wait and leaves no key', async () => {
    const client = cluster().client();
    const holder = cli(ep(), ['lock', 'x/e', '--', ...gatedChild(dir, 'e1')]);
    await holder.waitFor(/^start e1/);
    const waiter = cli(ep(), ['lock', 'x/e', '--', 'sh', '-c', 'echo never']);
    await waitForKeyCount(client, 'x/e/', 2);
    waiter.kill('SIGTERM');
    expect(await waiter.exited).toBe(128 + 15);
    expect(waiter.stdout).toEqual([]);
    expect(await keysUnder(client, 'x/e/')).toHaveLength(1);
    await openGate(dir, 'e1');
    expect(await holder.exited).toBe(0);
    await waitForPrefixEmpty(client, 'x/e/');
  });

  it("--try exits at once (conflict code); --timeout waits that long; the child's code passes through", async () => {
    const client = cluster().client();
    const holder = cli(ep(), ['lock', 'x/f', '--', ...gatedChild(dir, 'f1')]);
    await holder.waitFor(/^start f1/);

    const tried = cli(ep(), ['lock', '--try', 'x/f', '--', 'sh', '-c', 'echo never']);
    expect(await tried.exited).toBe(NOT_ACQUIRED);
    const chosen = cli(ep(), ['lock', '-n', '-E', '3', 'x/f', '--', 'sh', '-c', 'echo never']);
    expect(await chosen.exited).toBe(3);
    expect([...tried.stdout, ...chosen.stdout, ...tried.stderr]).toEqual([]);

    const started = performance.now();
    const timed = cli(ep(), ['lock', '--timeout', '1.5', 'x/f', '--', 'sh', '-c', 'echo never']);
    await waitForKeyCount(client, 'x/f/', 2);
    const waitingSince = performance.now();
    expect(await timed.exited).toBe(NOT_ACQUIRED);
    expect(timed.exitedAt! - started).toBeGreaterThanOrEqual(1500);
    expect(timed.exitedAt! - waitingSince).toBeLessThan(10_000);
    expect(timed.stdout).toEqual([]);
    expect(timed.stderr.join('\n')).toMatch(/not acquired within 1.5s/);
    // Neither left a key: only the holder's.
    expect(await keysUnder(client, 'x/f/')).toHaveLength(1);
    expect(holder.stdout).toEqual([expect.stringMatching(/^start f1/)]);
    await openGate(dir, 'f1');
    expect(await holder.exited).toBe(0);

    expect(await cli(ep(), ['lock', 'x/f', '--', 'sh', '-c', 'exit 7']).exited).toBe(7);
    expect(await cli(ep(), ['lock', '--timeout', '5', 'x/f', '--', 'sh', '-c', 'kill -KILL $$']).exited).toBe(128 + 9);
    const missing = cli(ep(), ['lock', 'x/f', '--', 'no-such-command-here']);
    expect(await missing.exited).toBe(127);
    expect(missing.stderr).toEqual(['etcd-recipes: no-such-command-here: command not found']);
    await waitForPrefixEmpty(client, 'x/f/');
  });

  it('rejects bad flags with one line and the usage code, touching nothing; names unreachable endpoints', async () => {
    const client = cluster().client();
    const before = (await client.get('x').exec()).header.revision;
    for (const { args, p } of [
      ['lock', 'x/g', '--ttl', 'soon', '--', 'true'],
      ['lock', 'x/g', '--try', '--timeout', '1', '--', 'true'],
      ['lock', 'x/g', '--bogus', '--', 'true'],
      ['lock', 'x/g'],
      ['semaphore', 'x/g', '--', 'true'],
      ['nonsense'],
    ].map((args) => ({ args, p: cli(ep(), args) }))) {
      expect(await p.exited, args.join(' ')).toBe(64);
      expect(p.stderr, args.join(' ')).toHaveLength(1);
      expect(p.stderr[0]).toMatch(/^etcd-recipes: /);
    }
    expect((await client.get('x').exec()).header.revision).toBe(before);

    const down = cli(['127.0.0.1:1'], ['--dial-timeout', '1s', 'lock', 'x/g', '--', 'true']);
    expect(await down.exited).toBe(69);
    expect(down.stderr).toHaveLength(1);
    expect(down.stderr[0]).toMatch(/cannot reach etcd at 127\.0\.0\.1:1/);
  });
});
