import type { HeldKey, Session as SessionType } from '../index.js';
import { Session } from '../index.js';
import { linkSignals } from '../core/abort.js';
import { durationOption, flagOption, integerOption, ttlOption } from './args.js';
import { runChild } from './child.js';
import type { CommandContext, OptionSpec, OptionValues } from './command.js';
import { EXIT, UsageError } from './exit-codes.js';
import { InterruptedError, signalNumber } from './interrupts.js';
import { errorMessage, say } from './output.js';

/** The default session TTL of the tool, in seconds (as `etcdctl lock --ttl`). */
export const DEFAULT_TTL_SECONDS = 10;
/** How long a child gets between SIGTERM and SIGKILL after a loss, by default. */
export const DEFAULT_KILL_AFTER_MS = 10_000;

/** Options shared by the commands that run a child while holding something. */
export const LOSS_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  ttl: {
    type: 'string',
    value: 'S',
    help: `session lease TTL in seconds: how long the hold outlives a crashed tool (default ${DEFAULT_TTL_SECONDS})`,
  },
  'kill-after': {
    type: 'string',
    value: 'S',
    help: `after a loss, SIGKILL the command this long after SIGTERM (default ${DEFAULT_KILL_AFTER_MS / 1000})`,
  },
};

/** Options of the commands that wait for a hold (lock, semaphore). */
export const HOLD_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  ...LOSS_OPTIONS,
  timeout: { type: 'string', value: 'S', help: `give up after waiting this long (exit ${EXIT.NOT_ACQUIRED})` },
  try: { type: 'boolean', short: 'n', help: `do not wait: exit ${EXIT.NOT_ACQUIRED} at once if taken` },
  'conflict-exit-code': {
    type: 'string',
    short: 'E',
    value: 'N',
    help: `exit code when not acquired (default ${EXIT.NOT_ACQUIRED})`,
  },
};

/** How to wait for a hold and supervise its child. */
export interface HoldSettings {
  ttl: number;
  /** Undefined: wait forever. */
  timeoutMs: number | undefined;
  wait: boolean;
  killAfterMs: number;
  conflictCode: number;
}

/** Reads {@link HOLD_OPTIONS}. @throws UsageError */
export function holdSettings(values: OptionValues): HoldSettings {
  const wait = !flagOption(values, 'try');
  const timeoutMs = durationOption(values, 'timeout', undefined, { min: 0 });
  if (!wait && timeoutMs !== undefined) throw new UsageError('--try and --timeout exclude each other');
  return {
    ttl: ttlOption(values, DEFAULT_TTL_SECONDS),
    timeoutMs,
    wait,
    killAfterMs: durationOption(values, 'kill-after', DEFAULT_KILL_AFTER_MS, { min: 0 }),
    conflictCode: integerOption(values, 'conflict-exit-code', 0, 255, EXIT.NOT_ACQUIRED),
  };
}

/** The exit code for a wait that `reason` ended: not acquired (timeout) or interrupted. Rethrows anything else. */
export function waitEnded(
  reason: unknown,
  conflictCode: number,
  ctx: CommandContext,
  what: string,
  timeoutMs: number | undefined,
): number {
  if (reason instanceof InterruptedError) return 128 + signalNumber(reason.signal);
  if (reason instanceof Error && reason.name === 'TimeoutError') {
    say(ctx.stderr, `${what}: not acquired within ${timeoutMs! / 1000}s`);
    return conflictCode;
  }
  throw reason;
}

/**
 * Waits for a hold (a lock, a permit), runs the child while holding it, and
 * releases it after the child exited. A loss (session lost, key deleted)
 * terminates the child and ends with {@link EXIT.LOST}.
 * @param acquire - takes the hold on `session`; with `wait` false, resolves undefined when taken
 * @param childEnv - the variables the child gets for this hold
 */
export async function runWhileHolding(
  ctx: CommandContext,
  s: HoldSettings,
  what: string,
  acquire: (session: SessionType, wait: boolean, signal: AbortSignal) => Promise<HeldKey | undefined>,
  childEnv: (held: HeldKey) => Record<string, string>,
): Promise<number> {
  const client = await ctx.connect();
  const waiting = linkSignals(
    ctx.interrupts.signal,
    s.timeoutMs === undefined ? undefined : AbortSignal.timeout(s.timeoutMs),
  );
  let session: SessionType | undefined;
  try {
    let held: HeldKey | undefined;
    try {
      session = await Session.create(client, { ttl: s.ttl, signal: waiting.signal });
      held = await acquire(session, s.wait, waiting.signal);
    } catch (err) {
      if (waiting.signal.aborted) return waitEnded(waiting.signal.reason, s.conflictCode, ctx, what, s.timeoutMs);
      throw err;
    } finally {
      waiting.dispose();
    }
    // flock -n is silent on a conflict, which keeps cron from mailing every host that lost the race.
    if (!held) return s.conflictCode;
    if (ctx.interrupts.signal.aborted) {
      await held.release();
      return waitEnded(ctx.interrupts.signal.reason, s.conflictCode, ctx, what, undefined);
    }
    // The hold's signal aborts when the session is lost and when its key is deleted from outside.
    const result = await runChild({
      command: ctx.child,
      env: childEnv(held),
      lost: held.signal,
      killAfterMs: s.killAfterMs,
      interrupts: ctx.interrupts,
      onLost: (reason) => say(ctx.stderr, `${what} lost (${errorMessage(reason)}); stopping the command`),
      onSpawnError: (message) => say(ctx.stderr, message),
    });
    await held
      .release()
      .catch((err: unknown) =>
        say(ctx.stderr, `${what}: release failed (${errorMessage(err)}); it ends when the lease expires`),
      );
    return result.lost ? EXIT.LOST : result.code;
  } finally {
    await session?.close();
  }
}

/** The child's variables common to every hold. */
export function holdEnv(held: HeldKey): Record<string, string> {
  return { ETCD_RECIPES_KEY: held.key, ETCD_RECIPES_FENCING_TOKEN: held.fencingToken.toString() };
}
