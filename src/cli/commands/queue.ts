import { Queue } from '../../index.js';
import { linkSignals } from '../../core/abort.js';
import { durationOption, expectArgs, integerOption } from '../args.js';
import type { Command } from '../command.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { waitEnded } from '../hold.js';
import { printJson } from '../output.js';
import { valueArgument } from '../stdin.js';

/** `queue NAME push VALUE` / `queue NAME pop`: a FIFO queue (Go recipe.Queue keys). */
export const queueCommand: Command = {
  name: 'queue',
  summary: 'push to or pop from a FIFO queue',
  usage: ['queue NAME push VALUE|-', 'queue NAME pop [--timeout S] [--conflict-exit-code N]'],
  description: `push appends VALUE (or stdin, with -) to the queue NAME. pop removes the oldest
item and prints its value on stdout, waiting while the queue is empty; with
--timeout it gives up after that long and exits ${EXIT.NOT_ACQUIRED} (or --conflict-exit-code).
Each item goes to exactly one pop. Same keys as Go's recipe.Queue. With --json,
push prints {"key"} and pop prints {"key","value"}.`,
  options: {
    timeout: { type: 'string', value: 'S', help: `pop: give up after waiting this long (exit ${EXIT.NOT_ACQUIRED})` },
    'conflict-exit-code': {
      type: 'string',
      short: 'E',
      value: 'N',
      help: `pop: exit code when nothing arrived in time (default ${EXIT.NOT_ACQUIRED})`,
    },
  },
  examples: [
    'etcd-recipes queue mail push "to=ops@example.com"',
    'value=$(etcd-recipes queue mail pop --timeout 30) && echo "got $value"',
  ],
  child: 'none',
  async run(ctx) {
    const [name, verb] = ctx.args;
    if (verb === 'push') {
      expectArgs(ctx.args, ['NAME', 'push', 'VALUE']);
      if (ctx.options.timeout !== undefined || ctx.options['conflict-exit-code'] !== undefined)
        throw new UsageError('push takes no --timeout or --conflict-exit-code');
      const value = await valueArgument(ctx.args[2]!, ctx.stdin);
      const client = await ctx.connect();
      const key = await new Queue(client, name!).enqueue(value);
      if (ctx.json) printJson(ctx.stdout, { key });
      return 0;
    }
    if (verb === 'pop') {
      expectArgs(ctx.args, ['NAME', 'pop']);
      const timeoutMs = durationOption(ctx.options, 'timeout', undefined, { min: 0 });
      const conflictCode = integerOption(ctx.options, 'conflict-exit-code', 0, 255, EXIT.NOT_ACQUIRED);
      const client = await ctx.connect();
      const queue = new Queue(client, name!);
      const waiting = linkSignals(
        ctx.interrupts.signal,
        timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs),
      );
      try {
        const item = await queue.dequeueItem({ signal: waiting.signal });
        if (ctx.json) printJson(ctx.stdout, { key: item.key.toString(), value: item.value.toString() });
        else ctx.stdout.write(Buffer.concat([item.value, Buffer.from('\n')]));
        return 0;
      } catch (err) {
        if (waiting.signal.aborted)
          return waitEnded(waiting.signal.reason, conflictCode, ctx, `queue ${name}`, timeoutMs);
        throw err;
      } finally {
        waiting.dispose();
        await queue.close();
      }
    }
    if (name === undefined) throw new UsageError('missing NAME');
    throw new UsageError(
      verb === undefined ? 'missing push or pop' : `unknown queue action ${JSON.stringify(verb)} (push or pop)`,
    );
  },
};
