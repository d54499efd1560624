import { formatStatus, inspectionJSON, inspectStatus, watchStatus, type RecipeKind } from '../../index.js';
import { expectArgs } from '../args.js';
import type { Command } from '../command.js';
import { UsageError } from '../exit-codes.js';
import { RECIPE_KINDS } from '../../inspect/discover.js';
import { rootOption, watchAndRootOptions } from './register.js';

/** `status NAME [--watch]`: who holds, leads, waits, from etcd alone. */
export const statusCommand: Command = {
  name: 'status',
  summary: 'show who holds, leads or waits on NAME (a table, or JSON)',
  usage: ['status NAME [--kind K] [--watch] [--json]'],
  description: `Reads NAME's keys (read-only) and prints its holders and ordered waiters (lock,
semaphore, rwmutex), leader and candidates (election), depth and head (queue),
pending, claimed and dead jobs (work queue) or instances (service), each with
its key, lease and the lease's remaining TTL. Sees Go and etcdctl participants
too. What NAME is, is told from its keys unless --kind says. Exits 1 when
nothing is found under NAME.`,
  options: {
    kind: { type: 'string', value: 'K', help: `what NAME is: ${RECIPE_KINDS.join(', ')}` },
    ...watchAndRootOptions('print again after every change (JSON lines with --json)'),
  },
  examples: ['etcd-recipes status locks/nightly', 'etcd-recipes status elections/scheduler --watch --json'],
  child: 'none',
  async run(ctx) {
    expectArgs(ctx.args, ['NAME']);
    const name = ctx.args[0]!;
    const kind = ctx.options.kind as string | undefined;
    if (kind !== undefined && !RECIPE_KINDS.includes(kind as RecipeKind))
      throw new UsageError(`--kind must be one of ${RECIPE_KINDS.join(', ')}`);
    const options = { kind: kind as RecipeKind | undefined, root: rootOption(ctx.options) };
    const client = await ctx.connect();
    if (!ctx.options.watch) {
      const found = await inspectStatus(client, name, { ...options, signal: ctx.interrupts.signal });
      ctx.stdout.write(formatStatus(found, { json: ctx.json }));
      return found.length ? 0 : 1;
    }
    for await (const found of watchStatus(client, name, { ...options, signal: ctx.interrupts.signal })) {
      ctx.stdout.write(
        ctx.json ? `${inspectionJSON(found)}\n` : `\n${new Date().toISOString()}\n${formatStatus(found)}`,
      );
    }
    return 0;
  },
};
