import type { Etcd3 } from 'etcd3';
import { DEFAULT_JOB_PRIORITY, Session, WorkQueue, type Job } from '../../index.js';
import { delay } from '../../core/abort.js';
import { durationOption, expectArgs, integerOption, ttlOption } from '../args.js';
import { runChild } from '../child.js';
import type { Command, CommandContext } from '../command.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { DEFAULT_KILL_AFTER_MS, DEFAULT_TTL_SECONDS, LOSS_OPTIONS } from '../hold.js';
import { errorMessage, printJson, say } from '../output.js';
import { valueArgument } from '../stdin.js';

const DEFAULT_RETRY_DELAY_MS = 1000;

/** Options and the verbs that take them. */
const OPTION_VERBS: Record<string, readonly string[]> = {
  priority: ['add'],
  concurrency: ['run'],
  'max-attempts': ['run'],
  'retry-delay': ['run'],
  ttl: ['run'],
  'kill-after': ['run'],
  limit: ['dead'],
};

/** `work NAME add|run|stats|dead`: a work queue with acks, retries and dead letters. */
export const workCommand: Command = {
  name: 'work',
  summary: 'add jobs to a work queue, or run a worker that runs a command per job',
  usage: [
    'work NAME add VALUE|- [--priority P]',
    'work NAME run [--concurrency N] [--max-attempts K] [--retry-delay S] [--ttl S] [--kill-after S] -- CMD [ARGS...]',
    'work NAME stats',
    'work NAME dead [--limit N]',
  ],
  description: `add puts a job (VALUE, or stdin with -) in the work queue NAME and prints its ID.
run is a worker: it claims jobs (lowest priority number first, then oldest)
and runs CMD for each, with the job's value on stdin and ETCD_RECIPES_JOB_ID,
ETCD_RECIPES_ATTEMPTS (1 on the first try) and ETCD_RECIPES_FENCING_TOKEN in
its environment; up to --concurrency jobs at once. Exit 0 acks the job; any
other exit gives it back for another try after --retry-delay (default 1s), and
after --max-attempts tries it goes to the dead letters. A job whose worker dies
is retried by another. The worker runs until SIGINT/SIGTERM (forwarded to the
running commands; their jobs are given back unless they exit 0), then exits 0;
it exits ${EXIT.LOST} if its session is lost. stats prints counts; dead lists dead
letters (with --json, as JSON lines).`,
  options: {
    priority: { type: 'string', value: 'P', help: `add: 0 (first) to 65535 (default ${DEFAULT_JOB_PRIORITY})` },
    concurrency: { type: 'string', value: 'N', help: 'run: jobs at once (default 1)' },
    'max-attempts': {
      type: 'string',
      value: 'K',
      help: 'run: dead-letter a job after K failed tries (default: retry forever)',
    },
    'retry-delay': {
      type: 'string',
      value: 'S',
      help: 'run: keep a failed job this long before giving it back (default 1)',
    },
    ...LOSS_OPTIONS,
    limit: { type: 'string', value: 'N', help: 'dead: list at most N (default 1000)' },
  },
  examples: [
    'etcd-recipes work thumbnails add "s3://bucket/cat.jpg"',
    'etcd-recipes work thumbnails run --concurrency 4 --max-attempts 3 -- sh -c \'./make-thumbnail "$(cat)"\'',
    'etcd-recipes work thumbnails stats --json',
    'etcd-recipes work thumbnails dead',
  ],
  child: 'optional',
  async run(ctx) {
    const [name, verb] = ctx.args;
    if (name === undefined) throw new UsageError('missing NAME');
    if (verb === undefined) throw new UsageError('missing add, run, stats or dead');
    if (!['add', 'run', 'stats', 'dead'].includes(verb))
      throw new UsageError(`unknown work action ${JSON.stringify(verb)} (add, run, stats or dead)`);
    for (const [option, verbs] of Object.entries(OPTION_VERBS)) {
      if (ctx.options[option] !== undefined && !verbs.includes(verb))
        throw new UsageError(`--${option} does not apply to ${verb}`);
    }
    if (verb !== 'run' && ctx.child.length > 0) throw new UsageError(`${verb} takes no command`);
    switch (verb) {
      case 'add':
        return add(ctx, name);
      case 'run':
        return work(ctx, name);
      case 'stats':
        return stats(ctx, name);
      default:
        return dead(ctx, name);
    }
  },
};

/** Runs `fn` with a work queue on a short-lived session (the queue's API takes one even to add or count). */
async function withQueue<T>(client: Etcd3, name: string, fn: (q: WorkQueue) => Promise<T>): Promise<T> {
  const session = await Session.create(client, { ttl: DEFAULT_TTL_SECONDS });
  try {
    return await fn(new WorkQueue(session, name));
  } finally {
    await session.close();
  }
}

async function add(ctx: CommandContext, name: string): Promise<number> {
  expectArgs(ctx.args, ['NAME', 'add', 'VALUE']);
  const priority = integerOption(ctx.options, 'priority', 0, 65535, DEFAULT_JOB_PRIORITY);
  const value = await valueArgument(ctx.args[2]!, ctx.stdin);
  const client = await ctx.connect();
  const id = await withQueue(client, name, (q) => q.add(value, { priority }));
  if (ctx.json) printJson(ctx.stdout, { id });
  else ctx.stdout.write(`${id}\n`);
  return 0;
}

async function stats(ctx: CommandContext, name: string): Promise<number> {
  expectArgs(ctx.args, ['NAME', 'stats']);
  const client = await ctx.connect();
  const s = await withQueue(client, name, (q) => q.stats());
  if (ctx.json) printJson(ctx.stdout, s);
  else ctx.stdout.write(`jobs ${s.jobs}\nclaimed ${s.claimed}\ndead ${s.dead}\nwaiting ${s.waiting}\n`);
  return 0;
}

async function dead(ctx: CommandContext, name: string): Promise<number> {
  expectArgs(ctx.args, ['NAME', 'dead']);
  const limit = integerOption(ctx.options, 'limit', 1, 1_000_000, 1000);
  const client = await ctx.connect();
  const jobs = await withQueue(client, name, (q) => q.deadLetters(limit));
  for (const j of jobs) {
    if (ctx.json) printJson(ctx.stdout, { id: j.id, value: j.value });
    else ctx.stdout.write(`${j.id}\t${j.value}\n`);
  }
  return 0;
}

async function work(ctx: CommandContext, name: string): Promise<number> {
  expectArgs(ctx.args, ['NAME', 'run']);
  if (ctx.child.length === 0) throw new UsageError('run needs -- CMD [ARGS...]');
  const concurrency = integerOption(ctx.options, 'concurrency', 1, 1000, 1);
  const maxAttempts = integerOption(ctx.options, 'max-attempts', 1, 1_000_000);
  const retryDelayMs = durationOption(ctx.options, 'retry-delay', DEFAULT_RETRY_DELAY_MS, { min: 0 });
  const ttl = ttlOption(ctx.options, DEFAULT_TTL_SECONDS);
  const killAfterMs = durationOption(ctx.options, 'kill-after', DEFAULT_KILL_AFTER_MS, { min: 0 });
  const stopping = ctx.interrupts.signal;

  const client = await ctx.connect();
  let session: Session;
  try {
    session = await Session.create(client, { ttl, signal: stopping });
  } catch (err) {
    if (stopping.aborted) return 0;
    throw err;
  }
  // The queue also dead-letters, on claim, a job whose claimers died K times without an ack.
  const queue = new WorkQueue(session, name, maxAttempts === undefined ? {} : { maxAttempts });

  /** A command that failed: its job goes back for another try after the delay, or to the dead letters. */
  const giveBack = async (job: Job, code: number): Promise<void> => {
    const what = `job ${job.id} (attempt ${job.attempts})`;
    if (stopping.aborted) return job.release();
    if (maxAttempts !== undefined && job.attempts >= maxAttempts) {
      say(ctx.stderr, `${what} failed with exit code ${code}; moved to the dead letters`);
      return job.deadLetter();
    }
    say(ctx.stderr, `${what} failed with exit code ${code}; retrying`);
    // Keeping the claim through the delay delays the retry for every worker, not just this one.
    await delay(retryDelayMs, stopping, job.signal).catch(() => undefined);
    return job.release();
  };

  const runJob = async (job: Job): Promise<void> => {
    const result = await runChild({
      command: ctx.child,
      input: job.buffer,
      env: {
        ETCD_RECIPES_JOB_ID: job.id,
        ETCD_RECIPES_ATTEMPTS: String(job.attempts),
        ETCD_RECIPES_FENCING_TOKEN: job.fencingToken.toString(),
        ETCD_RECIPES_KEY: job.key,
      },
      lost: job.signal,
      killAfterMs,
      interrupts: ctx.interrupts,
      onLost: (reason) => say(ctx.stderr, `job ${job.id}: claim lost (${errorMessage(reason)}); stopping its command`),
      onSpawnError: (message) => say(ctx.stderr, message),
    });
    // Exit 0: acked by the next claim's Txn, or on its own when the worker stops.
    if (!result.lost && result.code !== 0) await giveBack(job, result.code);
  };

  let lost: unknown;
  try {
    await queue.work(runJob, {
      concurrency,
      signal: stopping,
      // A lost claim: the job is retried elsewhere, as at-least-once delivery promises.
      onError: (err, job) => say(ctx.stderr, `job ${job.id}: ${errorMessage(err)}`),
    });
  } catch (err) {
    if (!session.expired) throw err;
    lost = session.signal.reason;
  } finally {
    await session.close();
  }
  if (lost === undefined) return 0;
  say(ctx.stderr, `work queue ${name}: session lost (${errorMessage(lost)})`);
  return EXIT.LOST;
}
