import { describe, expect, it } from 'vitest';
import { OutcomeUnknownError } from '../../src/core/errors.js';
import type { ClaimOptions, Job } from '../../src/index.js';
import { runWorkers } from '../../src/recipes/queues/work-queue/workers.js';

/*
 * The worker loop's own decisions, without etcd: what it tells onError and
 * what it acks when a claim ends in a way the real-etcd tests
 * (test/work-queue-work.test.ts) cannot force on demand.
 */

/** A job of the fake queue: only the fields the loop reads. */
function fakeJob(id: string): Job & { acks: number } {
  const job = {
    id,
    attempts: 1,
    done: false,
    acks: 0,
    async ack() {
      job.acks++;
      job.done = true;
    },
    async release() {
      job.done = true;
    },
  };
  return job as unknown as Job & { acks: number };
}

describe('the work() loop', () => {
  it('tells onError of a carried ack a stop cut off with OUTCOME_UNKNOWN, and does not ack it again', async () => {
    const first = fakeJob('first');
    const stop = new AbortController();
    const told: { error: unknown; id: string }[] = [];
    let claims = 0;
    const queue = {
      claim(options: ClaimOptions): Promise<Job> {
        claims++;
        if (claims === 1) return Promise.resolve(first);
        expect(options.ack).toBe(first);
        // The ack went out, then the stop came while etcd was unreachable: it may have landed.
        const cutOff = new Promise<Job>((_, reject) =>
          options.signal!.addEventListener('abort', () => {
            (options.ack as Job & { done: boolean }).done = true;
            reject(new OutcomeUnknownError('the ack may or may not have landed'));
          }),
        );
        setImmediate(() => stop.abort());
        return cutOff;
      },
    };
    const working = runWorkers(
      queue,
      () => undefined,
      { signal: stop.signal, onError: (error, job) => told.push({ error, id: job.id }) },
      'fake queue',
    );
    await working;
    expect(told).toEqual([{ error: expect.objectContaining({ code: 'OUTCOME_UNKNOWN' }), id: 'first' }]);
    expect(first.acks).toBe(0);
  });
});
