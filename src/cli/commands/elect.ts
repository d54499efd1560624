import { runAsLeader } from '../../index.js';
import { linkSignals } from '../../core/abort.js';
import { durationOption, expectArgs, flagOption, ttlOption } from '../args.js';
import { runChild, type ChildResult } from '../child.js';
import type { Command } from '../command.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { DEFAULT_KILL_AFTER_MS, DEFAULT_TTL_SECONDS, LOSS_OPTIONS, waitEnded } from '../hold.js';
import { errorMessage, say } from '../output.js';
import { observeElection } from './observe.js';

/** Marks the end of the campaign because our term was lost. */
class Lost extends Error {}

/** `elect NAME VALUE -- CMD`: run a command only on the leader. */
export const electCommand: Command = {
  name: 'elect',
  summary: 'run a command while this process is the leader (etcdctl elect compatible)',
  usage: ['elect NAME VALUE [--ttl S] [--kill-after S] -- CMD [ARGS...]', 'elect NAME --observe'],
  description: `Campaigns in election NAME with proposal VALUE, waits until elected (in
campaign order), runs CMD while leader, and resigns when CMD exits, so the next
candidate takes over at once. Same keys as Go's concurrency.Election and
\`etcdctl elect\`. CMD gets ETCD_RECIPES_KEY (the campaign key) and
ETCD_RECIPES_FENCING_TOKEN (its create revision, the term's fencing token). If
leadership is lost (session expired, key deleted) CMD gets SIGTERM, then SIGKILL
after --kill-after, and the tool exits ${EXIT.LOST}. SIGINT/SIGTERM/SIGHUP are forwarded
to CMD. With --observe, prints leader changes as JSON lines instead (see
\`observe\`). Exit code: CMD's own; ${EXIT.LOST} when lost.`,
  options: {
    ...LOSS_OPTIONS,
    observe: {
      type: 'boolean',
      short: 'l',
      help: 'observe the election instead of campaigning (like etcdctl elect -l)',
    },
  },
  examples: [
    'etcd-recipes elect scheduler "$(hostname)" -- ./scheduler --serve',
    'etcd-recipes elect scheduler --observe',
  ],
  child: 'optional',
  async run(ctx) {
    if (flagOption(ctx.options, 'observe')) {
      expectArgs(ctx.args, ['NAME']);
      if (ctx.child.length > 0) throw new UsageError('--observe takes no command');
      return observeElection(ctx, ctx.args[0]!);
    }
    expectArgs(ctx.args, ['NAME', 'VALUE']);
    if (ctx.child.length === 0) throw new UsageError('missing -- CMD [ARGS...] (or use --observe)');
    const [name, value] = ctx.args as [string, string];
    const ttl = ttlOption(ctx.options, DEFAULT_TTL_SECONDS);
    const killAfterMs = durationOption(ctx.options, 'kill-after', DEFAULT_KILL_AFTER_MS, { min: 0 });
    const what = `leadership of ${name}`;

    const client = await ctx.connect();
    const stop = linkSignals(ctx.interrupts.signal);
    let result: ChildResult | undefined;
    try {
      await runAsLeader(
        client,
        name,
        async (_signal, leader) => {
          result = await runChild({
            command: ctx.child,
            env: { ETCD_RECIPES_KEY: leader.key, ETCD_RECIPES_FENCING_TOKEN: leader.revision.toString() },
            // The term's own signal: the task's also aborts on our interrupts, which are forwarded, not a loss.
            lost: leader.election.signal,
            killAfterMs,
            interrupts: ctx.interrupts,
            onLost: (reason) => say(ctx.stderr, `${what} lost (${errorMessage(reason)}); stopping the command`),
            onSpawnError: (message) => say(ctx.stderr, message),
          });
          // runAsLeader would campaign again after a loss; the tool ends instead.
          if (result.lost) stop.abort(new Lost());
        },
        { value, ttl, signal: stop.signal },
      );
    } catch (err) {
      if (err instanceof Lost) return EXIT.LOST;
      if (result) return result.code;
      return waitEnded(err, EXIT.NOT_ACQUIRED, ctx, what, undefined);
    } finally {
      stop.dispose();
    }
    return result!.code;
  },
};
