import type { Etcd3 } from 'etcd3';
import { observeLeader, type LeaderState } from '../../index.js';
import { expectArgs } from '../args.js';
import type { Command, CommandContext } from '../command.js';
import { printJson } from '../output.js';

/** One leader state as a JSON object: `leader` is null when nobody leads. */
function leaderStateJson(state: LeaderState): Record<string, unknown> {
  const l = state.leader;
  return {
    leader: l ? { key: l.key, value: l.value, revision: l.revision, modRevision: l.modRevision, lease: l.lease } : null,
    revision: state.revision,
  };
}

/** Prints every leader change of election `name` as a JSON line until interrupted. */
export async function observeElection(ctx: CommandContext, name: string): Promise<number> {
  const client: Etcd3 = await ctx.connect();
  for await (const state of observeLeader(client, name, { signal: ctx.interrupts.signal })) {
    printJson(ctx.stdout, leaderStateJson(state));
  }
  // Interrupting is how an observation ends.
  return 0;
}

/** `observe NAME`: watch an election's leader. */
export const observeCommand: Command = {
  name: 'observe',
  summary: 'print every leader change of an election as a JSON line',
  usage: ['observe NAME'],
  description: `Prints the current leader of election NAME, then one line per change until
interrupted: {"leader":{"key","value","revision","modRevision","lease"},"revision":N},
with "leader":null while nobody leads. Works on elections of \`etcd-recipes elect\`,
\`etcdctl elect\` and Go's concurrency.Election alike. Same as \`elect NAME --observe\`.`,
  options: {},
  examples: ['etcd-recipes observe services/scheduler | jq -r \'.leader.value // "no leader"\''],
  child: 'none',
  run(ctx) {
    expectArgs(ctx.args, ['NAME']);
    return observeElection(ctx, ctx.args[0]!);
  },
};
