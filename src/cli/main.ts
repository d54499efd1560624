import { closeClient } from '../core/client.js';
import type { Etcd3 } from 'etcd3';
import { isRecipeError } from '../index.js';
import { isTransient } from '../core/etcd-errors.js';
import { findCommandWord, parseOptions, splitAtDashDash } from './args.js';
import type { Command, CommandContext } from './command.js';
import { COMMANDS } from './commands.js';
import { connect } from './connect.js';
import { CONNECTION_OPTIONS, resolveConnection } from './connection.js';
import { CliExit, EXIT, UsageError } from './exit-codes.js';
import { commandHelp, COMMON_OPTIONS, programHelp } from './help.js';
import { Interrupts } from './interrupts.js';
import { errorMessage, PROGRAM, say } from './output.js';

/** Where the tool reads and writes, and what it knows about itself (defaults: this process's). */
export interface MainOptions {
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
  stdin?: NodeJS.ReadableStream;
  env?: NodeJS.ProcessEnv;
  /** Printed by `--version`. */
  version?: string;
  /** The commands (default: {@link COMMANDS}). */
  commands?: readonly Command[];
}

const GLOBAL_OPTIONS = {
  ...CONNECTION_OPTIONS,
  ...COMMON_OPTIONS,
  version: { type: 'boolean' as const, help: 'print the version' },
};

/**
 * Runs the tool with `argv` (without node and script) and resolves with the
 * exit code; never rejects. Errors become one line on stderr.
 */
export async function main(argv: readonly string[], o: MainOptions = {}): Promise<number> {
  const stdout = o.stdout ?? process.stdout;
  const stderr = o.stderr ?? process.stderr;
  const commands = o.commands ?? COMMANDS;
  let command: Command | undefined;
  try {
    const { own, child } = splitAtDashDash(argv);
    const at = findCommandWord(own, GLOBAL_OPTIONS);
    if (at < 0) {
      const { values } = parseOptions(own, GLOBAL_OPTIONS);
      if (values.version) {
        stdout.write(`${PROGRAM} ${o.version ?? 'unknown'}\n`);
        return 0;
      }
      if (values.help) {
        stdout.write(programHelp(commands));
        return 0;
      }
      stderr.write(programHelp(commands));
      return EXIT.USAGE;
    }
    const name = own[at]!;
    const rest = [...own.slice(0, at), ...own.slice(at + 1)];
    if (name === 'help') {
      const topic = rest.find((a) => !a.startsWith('-'));
      const c = topic === undefined ? undefined : commands.find((x) => x.name === topic);
      if (topic !== undefined && !c) throw new UsageError(`unknown command ${JSON.stringify(topic)}`);
      stdout.write(c ? commandHelp(c) : programHelp(commands));
      return 0;
    }
    command = commands.find((c) => c.name === name);
    if (!command)
      throw new UsageError(
        `unknown command ${JSON.stringify(name)} (commands: ${commands.map((c) => c.name).join(', ')})`,
      );
    const { values, positionals } = parseOptions(rest, { ...GLOBAL_OPTIONS, ...command.options });
    if (values.help) {
      stdout.write(commandHelp(command));
      return 0;
    }
    if (values.version) throw new UsageError('--version takes no command');
    if (command.child === 'required' && (child === undefined || child.length === 0))
      throw new UsageError('missing -- CMD [ARGS...]');
    if (command.child === 'none' && child !== undefined)
      throw new UsageError(`${command.name} runs no command (nothing goes after --)`);
    const connection = resolveConnection(values, o.env ?? process.env);
    return await runCommand(command, {
      args: positionals,
      options: values,
      child: child ?? [],
      json: values.json === true,
      connection,
      stdout,
      stderr,
      stdin: o.stdin ?? process.stdin,
    });
  } catch (err) {
    return report(err, stderr, command);
  }
}

async function runCommand(command: Command, base: Omit<CommandContext, 'interrupts' | 'connect'>): Promise<number> {
  const interrupts = new Interrupts();
  let client: Etcd3 | undefined;
  try {
    return await command.run({
      ...base,
      interrupts,
      connect: async () => (client ??= await connect(base.connection)),
    });
  } finally {
    // Settles anything still pending and revokes the sessions the commands created.
    if (client) await closeClient(client);
    interrupts.dispose();
  }
}

/** One line on stderr for a failure, and its exit code. */
function report(err: unknown, stderr: NodeJS.WritableStream, command: Command | undefined): number {
  const prefix = command ? `${command.name}: ` : '';
  if (err instanceof UsageError) {
    say(stderr, `${prefix}${err.message} (see '${PROGRAM} ${command ? `${command.name} ` : ''}--help')`);
    return err.code;
  }
  if (err instanceof CliExit) {
    if (err.message) say(stderr, `${prefix}${err.message}`);
    return err.code;
  }
  // The library checks its arguments before writing anything: a bad value from the command line.
  if (isRecipeError(err, 'INVALID_ARGUMENT')) {
    say(stderr, `${prefix}${errorMessage(err)}`);
    return EXIT.USAGE;
  }
  say(stderr, `${prefix}${errorMessage(err).split('\n')[0]}`);
  return isTransient(err) ? EXIT.UNAVAILABLE : EXIT.ERROR;
}
