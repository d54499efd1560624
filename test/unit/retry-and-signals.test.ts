import { describe, expect, it } from 'vitest';
import { abortReason, linkSignals, raceAbort, untilWoken } from '../../src/core/abort.js';
import { InvalidArgumentError } from '../../src/core/errors.js';
import { Backoff, retrying } from '../../src/core/retry.js';
import { checkInteger, checkOptions, checkSignal } from '../../src/core/validate.js';

const transient = () =>
  Object.assign(new Error('14 UNAVAILABLE: No connection established'), { name: 'GRPCUnavailableError' });

describe('retry policy (no etcd)', () => {
  it('retries transient failures with backoff and returns the first success', async () => {
    let calls = 0;
    const value = await retrying(async () => {
      if (++calls < 4) throw transient();
      return 'ok';
    });
    expect(value).toBe('ok');
    expect(calls).toBe(4);
  });

  it('rethrows a permanent failure at once', async () => {
    let calls = 0;
    const permanent = new Error('etcdserver: mvcc: required revision has been compacted');
    await expect(
      retrying(async () => {
        calls++;
        throw permanent;
      }),
    ).rejects.toBe(permanent);
    expect(calls).toBe(1);
  });

  it('gives up after maxElapsedMs, and on the signal with its reason', async () => {
    const started = performance.now();
    await expect(
      retrying(
        async () => {
          throw transient();
        },
        { maxElapsedMs: 200 },
      ),
    ).rejects.toThrow(/UNAVAILABLE/);
    expect(performance.now() - started).toBeLessThan(2000);
    const reason = new Error('stop');
    const controller = new AbortController();
    setTimeout(() => controller.abort(reason), 50);
    await expect(
      retrying(
        async () => {
          throw transient();
        },
        { signals: [controller.signal], maxElapsedMs: Infinity },
      ),
    ).rejects.toBe(reason);
  });

  it('retryIf chooses what to retry', async () => {
    let calls = 0;
    await expect(
      retrying(
        async () => {
          calls++;
          throw new Error('custom');
        },
        { retryIf: () => calls < 3 },
      ),
    ).rejects.toThrow('custom');
    expect(calls).toBe(3);
  });
  it('any number of retries may sleep at once without a listener-leak warning', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const sleepers = Array.from({ length: 20 }, () => {
        let calls = 0;
        return retrying(async () => {
          if (++calls < 2) throw transient();
          return calls;
        });
      });
      expect(await Promise.all(sleepers)).toEqual(Array(20).fill(2));
      await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).not.toContain('MaxListenersExceededWarning');
  });
});

describe('backoff (no etcd)', () => {
  it('doubles each pause up to the maximum, and starts over after reset', () => {
    const b = new Backoff(25, 100);
    expect([b.next(), b.next(), b.next(), b.next()]).toEqual([25, 50, 100, 100]);
    b.reset();
    expect(b.next()).toBe(25);
    expect(new Backoff(500, 100).next()).toBe(100);
  });

  it('schedule runs once after the pause, replacing a pending run; cancel drops it', async () => {
    const b = new Backoff(10, 1000);
    const runs: string[] = [];
    const run = (name: string) =>
      new Promise<void>((resolve) => {
        b.schedule(() => {
          runs.push(name);
          resolve();
        }, true);
      });
    void run('first'); // 10 ms, replaced before it fires
    await run('second'); // 20 ms
    expect(runs).toEqual(['second']);
    b.schedule(() => runs.push('third'), false); // 40 ms, cancelled
    b.cancel();
    await run('fourth'); // 80 ms: the third would have run before it
    expect(runs).toEqual(['second', 'fourth']);
  });
});

describe('signals (no etcd)', () => {
  it('links signals and detaches on dispose', () => {
    const a = new AbortController();
    const b = new AbortController();
    const linked = linkSignals(a.signal, undefined, b.signal);
    b.abort('why');
    expect(linked.signal.aborted).toBe(true);
    expect(abortReason(linked.signal)).toBe('why');
    const c = new AbortController();
    const l2 = linkSignals(c.signal);
    l2.dispose();
    c.abort();
    expect(l2.signal.aborted).toBe(false);
  });

  it('raceAbort rejects with the reason; untilWoken resolves on wake', async () => {
    const c = new AbortController();
    const never = new Promise<never>(() => undefined);
    const racing = raceAbort(never, c.signal);
    c.abort(new Error('gone'));
    await expect(racing).rejects.toThrow('gone');
    let wake: (() => void) | undefined;
    const waiting = untilWoken(new AbortController().signal, (w) => {
      wake = w;
    });
    wake!();
    await expect(waiting).resolves.toBeUndefined();
  });
});

describe('argument checks (no etcd)', () => {
  it('name the argument and the accepted range', () => {
    expect(() => checkInteger(0, 'options.ttl', 1)).toThrow(InvalidArgumentError);
    expect(() => checkInteger(1.5, 'count', 1)).toThrow(/count/);
    expect(() => checkSignal('x')).toThrow(/options.signal/);
  });

  it('refuse an AbortSignal where the options go, and non-plain objects', () => {
    expect(() => checkOptions(AbortSignal.timeout(1000))).toThrow(/pass it as \{ signal \}/);
    expect(() => checkOptions(new Map())).toThrow(InvalidArgumentError);
    expect(() => checkOptions([])).toThrow(InvalidArgumentError);
    expect(() => checkOptions({ signal: AbortSignal.timeout(1000) })).not.toThrow();
    expect(() => checkOptions(Object.create(null))).not.toThrow();
  });
});
