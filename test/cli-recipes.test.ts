import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { cli, etcdctl, gatedChild, openGate, tempDir, type Proc } from './cli-helpers.js';
import { Mutex, Session } from '../src/index.js';
import { keysUnder, useCluster, waitForKeyCount, waitForPrefixEmpty } from './helpers.js';

const LOST = 79;
const NOT_ACQUIRED = 75;

/** Resolves once `n` of `procs` have printed a `start` line. */
async function waitForStarts(procs: readonly Proc[], n: number): Promise<Proc[]> {
  for (let i = 0; i <= procs.length; i++) {
    const started = procs.filter((p) => p.stdout.some((l) => l.startsWith('start ')));
    if (started.length >= n) return started;
    await Promise.race(procs.filter((p) => !started.includes(p)).map((p) => p.waitFor(/^start /)));
  }
  throw new Error(`fewer than ${n} started`);
}

/** The label of a proc's child (second word of its start line). */
const labelOf = (p: Proc) => p.stdout.find((l) => l.startsWith('start '))!.split(' ')[1]!;

describe('etcd-recipes semaphore, elect, observe, queue, work, register, services', () => {
  const cluster = useCluster();
  const dir = tempDir();
  const ep = () => cluster().endpoints;

  it('semaphore --permits 2 runs at most 2 children at once across 5 invocations', async () => {
    const client = cluster().client();
    const log = `${dir}/semaphore.log`;
    const procs = Array.from({ length: 5 }, () =>
      cli(ep(), [
        'semaphore',
        'sem/a',
        '--permits',
        '2',
        '--',
        ...gatedChild(dir, 's$ETCD_RECIPES_FENCING_TOKEN', { log }),
      ]),
    );
    // Two hold, three wait in line: all five keys exist.
    await waitForKeyCount(client, 'sem/a/queue/', 5);
    await waitForStarts(procs, 2);
    expect(procs.filter((p) => p.stdout.length > 0)).toHaveLength(2);

    const done = new Set<Proc>();
    for (let released = 0; released < 5; released++) {
      const running = procs.filter((p) => p.stdout.length > 0 && !done.has(p));
      expect(running.length).toBeGreaterThan(0);
      expect(running.length).toBeLessThanOrEqual(2);
      const next = running[0]!;
      await openGate(dir, labelOf(next));
      expect(await next.exited).toBe(0);
      done.add(next);
      if (released < 3) await waitForStarts(procs, released + 3);
    }
    // The children's own record, in the order things happened: never more than 2 at once, and 2 at some point.
    let now = 0;
    let peak = 0;
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(10);
    for (const line of lines) {
      now += line.startsWith('start ') ? 1 : -1;
      peak = Math.max(peak, now);
      expect(now).toBeLessThanOrEqual(2);
    }
    expect(peak).toBe(2);
    expect(await keysUnder(client, 'sem/a/queue/')).toEqual([]);
  });

  it("elect runs the child on the leader only, the next one's once it is killed; observe prints changes", async () => {
    const client = cluster().client();
    const observer = cli(ep(), ['observe', 'el/a']);
    await observer.waitFor(/"leader":null/);
    const a = cli(ep(), ['elect', 'el/a', 'node-a', '--', ...gatedChild(dir, 'ea')]);
    const [, , tokenA, pidA] = (await a.waitFor(/^start ea/)).split(' ');
    const b = cli(ep(), ['elect', 'el/a', 'node-b', '--', ...gatedChild(dir, 'eb')]);
    await waitForKeyCount(client, 'el/a/', 2);
    expect(b.stdout).toEqual([]);

    process.kill(Number(pidA), 'SIGKILL');
    const [, , tokenB] = (await b.waitFor(/^start eb/)).split(' ');
    // The leader's tool resigned once its child died (exit 128+9), which elected the successor.
    expect(await a.exited).toBe(128 + 9);
    expect(BigInt(tokenB!)).toBeGreaterThan(BigInt(tokenA!));
    await openGate(dir, 'eb');
    expect(await b.exited).toBe(0);
    await waitForPrefixEmpty(client, 'el/a/');

    await observer.waitFor(/"value":"node-b"/);
    await observer.waitFor(/"leader":null.*/);
    observer.kill('SIGINT');
    expect(await observer.exited).toBe(0);
    const states = observer.stdout.map(
      (l) => JSON.parse(l) as { leader: { value: string; revision: number } | null; revision: number },
    );
    expect(states.map((s) => s.leader?.value ?? null)).toEqual([null, 'node-a', 'node-b', null]);
    expect(states[1]!.leader!.revision).toBe(Number(tokenA));
    expect(states[2]!.leader!.revision).toBe(Number(tokenB));
  });

  it('elect exits "lost" and stops the child when its key is deleted; --observe works on etcdctl elect', async () => {
    const client = cluster().client();
    const ctl = etcdctl(ep(), ['elect', 'el/b', 'from-etcdctl']);
    await ctl.waitFor(/^from-etcdctl$/);
    const observer = cli(ep(), ['elect', 'el/b', '--observe']);
    const first = JSON.parse(await observer.waitFor(/^\{/)) as { leader: { value: string } | null };
    expect(first.leader?.value).toBe('from-etcdctl');
    ctl.kill('SIGINT');
    await ctl.exited;
    await observer.waitFor(/"leader":null/);
    observer.kill('SIGTERM');
    expect(await observer.exited).toBe(0);

    const tool = cli(ep(), ['elect', 'el/b', 'node-c', '--', ...gatedChild(dir, 'ec')]);
    await tool.waitFor(/^start ec/);
    const [key] = await keysUnder(client, 'el/b/');
    expect(await etcdctl(ep(), ['del', key!]).exited).toBe(0);
    await tool.waitFor(/^term ec/);
    expect(await tool.exited).toBe(LOST);
  });

  it("status shows a lock's holder and waiter with leases, as table and as JSON; nothing found exits 1", async () => {
    const client = cluster().client();
    const holder = await Session.create(client, { ttl: 30 });
    const waiter = await Session.create(client, { ttl: 30 });
    const held = await new Mutex(holder, 'st/lock').acquire();
    const waiting = new Mutex(waiter, 'st/lock').acquire();
    await waitForKeyCount(client, 'st/lock/', 2);
    const json = cli(ep(), ['status', 'st/lock', '--json']);
    expect(await json.exited).toBe(0);
    const [lock] = JSON.parse(json.stdout.join('\n')) as {
      kind: string;
      inspection: { holders: { key: string }[]; waiters: { key: string }[] };
    }[];
    expect(lock!.kind).toBe('lock');
    expect(lock!.inspection.holders.map((h) => h.key)).toEqual([held.key]);
    expect(lock!.inspection.waiters.map((w) => w.key)).toEqual([`st/lock/${waiter.leaseHex}`]);
    const table = cli(ep(), ['status', 'st/lock']);
    expect(await table.exited).toBe(0);
    expect(table.stdout.join('\n')).toContain(holder.leaseHex);
    expect(await cli(ep(), ['status', 'st/nothing']).exited).toBe(1);
    await held.release();
    await (await waiting).release();
    await Promise.all([holder.close(), waiter.close()]);
  });

  it('queue push and pop: FIFO, a line per value; pop --timeout on an empty queue: the conflict code', async () => {
    const pushed = cli(ep(), ['queue', 'q/a', 'push', 'first', '--json']);
    expect(await pushed.exited).toBe(0);
    expect(JSON.parse(pushed.stdout[0]!)).toEqual({ key: expect.stringMatching(/^q\/a\/[0-9]+$/) });
    expect(await cli(ep(), ['queue', 'q/a', 'push', '-'], { input: 'second value' }).exited).toBe(0);
    const one = cli(ep(), ['queue', 'q/a', 'pop']);
    expect(await one.exited).toBe(0);
    const two = cli(ep(), ['queue', 'q/a', 'pop', '--json']);
    expect(await two.exited).toBe(0);
    expect(one.stdout).toEqual(['first']);
    expect(JSON.parse(two.stdout[0]!)).toMatchObject({ value: 'second value' });
    const none = cli(ep(), ['queue', 'q/a', 'pop', '--timeout', '0.5']);
    expect(await none.exited).toBe(NOT_ACQUIRED);
    expect(none.stdout).toEqual([]);
  });

  it('work run: a command that fails twice then succeeds is acked on its third attempt', async () => {
    const client = cluster().client();
    const log = `${dir}/work-a.log`;
    const added = cli(ep(), ['work', 'w/a', 'add', 'hello']);
    expect(await added.exited).toBe(0);
    const id = added.stdout[0]!;
    expect(id).toMatch(/^00100-[0-9]+$/);
    const worker = cli(ep(), [
      'work',
      'w/a',
      'run',
      '--retry-delay',
      '0',
      '--max-attempts',
      '5',
      '--',
      'sh',
      '-c',
      `v=$(cat); echo "$ETCD_RECIPES_JOB_ID $ETCD_RECIPES_ATTEMPTS $v $ETCD_RECIPES_FENCING_TOKEN" >> ${log}; ` +
        '[ "$ETCD_RECIPES_ATTEMPTS" -ge 3 ]',
    ]);
    await waitForPrefixEmpty(client, 'w/a/jobs/');
    worker.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
    const runs = readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(' '));
    expect(runs.map(([jobId, attempt, value]) => [jobId, attempt, value])).toEqual([
      [id, '1', 'hello'],
      [id, '2', 'hello'],
      [id, '3', 'hello'],
    ]);
    const tokens = runs.map((r) => BigInt(r[3]!));
    expect(tokens[1]! > tokens[0]! && tokens[2]! > tokens[1]!).toBe(true);
    expect(worker.stderr.filter((l) => /failed with exit code 1; retrying/.test(l))).toHaveLength(2);
    const stats = cli(ep(), ['work', 'w/a', 'stats', '--json']);
    expect(await stats.exited).toBe(0);
    expect(JSON.parse(stats.stdout[0]!)).toEqual({ jobs: 0, claimed: 0, dead: 0, waiting: 0 });
  });

  it('work run: a command that always fails sends the job to the dead letters after --max-attempts', async () => {
    const client = cluster().client();
    const log = `${dir}/work-b.log`;
    const added = cli(ep(), ['work', 'w/b', 'add', '-', '--json'], { input: 'poison' });
    expect(await added.exited).toBe(0);
    const { id } = JSON.parse(added.stdout[0]!) as { id: string };
    const worker = cli(ep(), [
      'work',
      'w/b',
      'run',
      '--retry-delay',
      '0',
      '--max-attempts',
      '2',
      '--',
      'sh',
      '-c',
      `echo "$ETCD_RECIPES_ATTEMPTS $(cat)" >> ${log}; exit 1`,
    ]);
    await waitForKeyCount(client, 'w/b/dead/', 1);
    worker.kill('SIGTERM');
    expect(await worker.exited).toBe(0);
    expect(readFileSync(log, 'utf8').trim().split('\n')).toEqual(['1 poison', '2 poison']);
    expect(worker.stderr.join('\n')).toMatch(/moved to the dead letters/);
    const dead = cli(ep(), ['work', 'w/b', 'dead', '--json']);
    expect(await dead.exited).toBe(0);
    expect(dead.stdout.map((l) => JSON.parse(l) as unknown)).toEqual([{ id, value: 'poison' }]);
    const stats = cli(ep(), ['work', 'w/b', 'stats']);
    expect(await stats.exited).toBe(0);
    expect(stats.stdout).toEqual(['jobs 0', 'claimed 0', 'dead 1', 'waiting 0']);
  });

  it('register keeps an instance listed while its command runs; services lists it and --watch follows it', async () => {
    const client = cluster().client();
    const watcher = cli(ep(), ['services', 'svc-a', '--watch']);
    const reg = cli(ep(), [
      'register',
      'svc-a',
      'i1',
      '127.0.0.1:9',
      '--meta',
      'zone=a',
      '--meta',
      'v=1',
      '--',
      ...gatedChild(dir, 'r1'),
    ]);
    await reg.waitFor(/^start r1/);
    const listed = cli(ep(), ['services', 'svc-a']);
    expect(await listed.exited).toBe(0);
    expect(listed.stdout).toEqual(['i1\t127.0.0.1:9\t{"zone":"a","v":"1"}']);
    const added = JSON.parse(await watcher.waitFor(/"type":"added"/)) as Record<string, unknown>;
    expect(added).toMatchObject({
      type: 'added',
      id: 'i1',
      address: '127.0.0.1:9',
      metadata: { zone: 'a', v: '1' },
      key: 'services/svc-a/i1',
    });

    const taken = cli(ep(), ['register', 'svc-a', 'i1', '127.0.0.1:10', '--', 'true']);
    expect(await taken.exited).toBe(NOT_ACQUIRED);

    await openGate(dir, 'r1');
    expect(await reg.exited).toBe(0);
    await watcher.waitFor(/"type":"removed"/);
    watcher.kill('SIGTERM');
    expect(await watcher.exited).toBe(0);
    expect(await keysUnder(client, 'services/svc-a/')).toEqual([]);
  });
});
