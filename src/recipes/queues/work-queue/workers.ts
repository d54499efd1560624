import { combineSignals } from '../../../core/abort.js';
import { isRecipeError } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import type { WaitOptions } from '../../../core/options.js';
import { checkFunction, checkInteger, checkOptions, checkSignal } from '../../../core/validate.js';
import type { ClaimOptions, Job } from '../work-queue.js';

/** What {@link WorkQueue.work} runs for each job: resolve when done, throw to give the job back. */
export type JobHandler = (job: Job) => Promise<void> | void;

/** Options of {@link WorkQueue.work}. */
export interface WorkOptions extends WaitOptions {
  /**
   * Stops the workers: no job is claimed after it aborts. A handler already
   * running finishes, and its job is acked (or given back) as usual; to cut
   * handlers short, watch the same signal in them. `work()` then resolves.
   */
  signal?: AbortSignal;
  /** Jobs run at once, each by its own loop (default 1). */
  concurrency?: number;
  /**
   * Told of each job that did not complete: the handler threw (the job was
   * given back), its ack found the claim lost (the job runs elsewhere), or
   * a stop cut its ack off while etcd was unreachable (`OUTCOME_UNKNOWN`:
   * the job may run again).
   * Default: logged under `DEBUG=etcd-recipes:work-queue`. If it throws,
   * the workers stop and `work()` rejects with its error.
   */
  onError?: (error: unknown, job: Job) => void;
}

const log = logger('work-queue');

/** The part of a WorkQueue the workers use. */
interface Claimer {
  claim(options: ClaimOptions): Promise<Job>;
}

/**
 * `concurrency` loops, each claiming job after job and acking the job it
 * finished in the next claim's Txn (`claim({ ack })`), until `signal`
 * aborts; the first failure that is not a job's own (session lost, client
 * closed) stops every loop and is thrown.
 */
export async function runWorkers(
  queue: Claimer,
  handler: JobHandler,
  options: WorkOptions,
  what: string,
): Promise<void> {
  checkFunction(handler, 'handler');
  checkOptions(options);
  checkSignal(options.signal);
  const { concurrency = 1, signal } = options;
  checkInteger(concurrency, 'options.concurrency', 1, 10_000);
  if (options.onError !== undefined) checkFunction(options.onError, 'options.onError');
  const onError =
    options.onError ??
    ((error: unknown, job: Job) =>
      log('%s: job %s (attempt %d) not done: %s', what, job.id, job.attempts, (error as Error)?.message ?? error));
  const failed = new AbortController();
  const stop = combineSignals(signal, failed.signal);
  const loop = async () => {
    try {
      await workLoop(queue, handler, stop.signal, onError);
    } catch (error) {
      failed.abort(error); // the first failure is the reason; later ones leave it
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, loop));
  } finally {
    stop.dispose();
  }
  if (failed.signal.aborted) throw failed.signal.reason;
}

async function workLoop(
  queue: Claimer,
  handler: JobHandler,
  stop: AbortSignal,
  onError: (error: unknown, job: Job) => void,
): Promise<void> {
  /** Done, and acked by the next claim. */
  let finished: Job | undefined;
  try {
    while (!stop.aborted) {
      let job: Job;
      try {
        job = await queue.claim({ signal: stop, ack: finished });
      } catch (error) {
        if (stop.aborted) {
          // Stopped while waiting: the carried ack landed first (`finished.done`) or is acked below, unless it
          // was cut off with etcd unreachable: then it may not have landed, and the job may run again.
          if (finished && isRecipeError(error, 'OUTCOME_UNKNOWN')) onError(error, finished);
          return;
        }
        if (!finished || !isRecipeError(error, 'LOCK_NOT_HELD')) throw error;
        // The carried ack found the claim lost: nothing was acked or claimed, and the job runs elsewhere.
        const lost = finished;
        finished = undefined;
        onError(error, lost);
        continue;
      }
      finished = undefined;
      try {
        await handler(job);
      } catch (error) {
        try {
          onError(error, job);
        } finally {
          // Given back even when onError throws (that ends the workers): the session may live on.
          if (!job.done) await job.release();
        }
        continue;
      }
      if (!job.done) finished = job;
    }
  } finally {
    const last = finished;
    if (last && !last.done) await last.ack().catch((error: unknown) => onError(error, last));
  }
}
