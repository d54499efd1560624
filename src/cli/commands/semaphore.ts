import { MAX_PERMITS, Semaphore } from '../../index.js';
import { expectArgs, integerOption } from '../args.js';
import type { Command } from '../command.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { holdEnv, holdSettings, HOLD_OPTIONS, runWhileHolding } from '../hold.js';

/** `semaphore NAME --permits N -- CMD`: at most N commands at once across hosts. */
export const semaphoreCommand: Command = {
  name: 'semaphore',
  summary: 'run a command while holding one of N permits (like consul lock -n)',
  usage: ['semaphore NAME --permits N [--ttl S] [--timeout S | --try] [--kill-after S] -- CMD [ARGS...]'],
  description: `Waits for one of the N permits of the counting semaphore NAME (FIFO), runs CMD
while holding it, and gives it back when CMD exits. Every user of NAME must
pass the same --permits. CMD gets ETCD_RECIPES_KEY (the permit key) and
ETCD_RECIPES_FENCING_TOKEN (its create revision). Loss, signals and exit codes
as for \`lock\`: CMD's own code; ${EXIT.NOT_ACQUIRED} (or --conflict-exit-code) when not
acquired; ${EXIT.LOST} when lost.`,
  options: {
    permits: { type: 'string', value: 'N', help: `how many holders at most (1 to ${MAX_PERMITS}; required)` },
    ...HOLD_OPTIONS,
  },
  examples: ['etcd-recipes semaphore --permits 2 gpu -- ./train.sh'],
  child: 'required',
  async run(ctx) {
    expectArgs(ctx.args, ['NAME']);
    const name = ctx.args[0]!;
    const permits = integerOption(ctx.options, 'permits', 1, MAX_PERMITS);
    if (permits === undefined) throw new UsageError('--permits N is required');
    const settings = holdSettings(ctx.options);
    return runWhileHolding(
      ctx,
      settings,
      `semaphore ${name}`,
      (session, wait, signal) => {
        const sem = new Semaphore(session, name, permits);
        return wait ? sem.acquire({ signal }) : sem.tryAcquire({ signal });
      },
      holdEnv,
    );
  },
};
