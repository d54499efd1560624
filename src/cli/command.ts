import type { Etcd3 } from 'etcd3';
import type { ConnectionOptions } from './connection.js';
import type { Interrupts } from './interrupts.js';

/** One option of a command, as `util.parseArgs` takes it plus what `--help` shows. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
  /** May be given more than once (values collected in order). */
  multiple?: boolean;
  /** Placeholder shown in help, e.g. `S` for seconds. */
  value?: string;
  help: string;
}

/** Option values as `util.parseArgs` returns them. */
export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** What a command's `run` gets. */
export interface CommandContext {
  /** Positional arguments after the command's name (before `--`). */
  readonly args: readonly string[];
  /** Option values, connection flags included. */
  readonly options: OptionValues;
  /** The command line after `--` (the child to run), possibly empty. */
  readonly child: readonly string[];
  /** `--json` was given: machine-readable output. */
  readonly json: boolean;
  /** Resolved connection settings (flags, then ETCDCTL_* / ETCD_ENDPOINTS, then defaults). */
  readonly connection: ConnectionOptions;
  /** SIGINT/SIGTERM/SIGHUP received by the tool. */
  readonly interrupts: Interrupts;
  /**
   * Connects (checking that etcd answers within the dial timeout) and returns
   * the client; closed by the caller of `run` after it settles.
   */
  connect(): Promise<Etcd3>;
  /** Where output goes (process.stdout / process.stderr, or test doubles). */
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly stdin: NodeJS.ReadableStream;
}

/**
 * A command of the tool. To add one, write a module exporting a `Command`
 * and list it in `commands.ts`.
 */
export interface Command {
  /** The word after `etcd-recipes`. */
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** Usage lines without the program name, e.g. `lock NAME [--try] -- CMD [ARGS...]`. */
  readonly usage: readonly string[];
  /** What it does, a few lines for `--help`. */
  readonly description: string;
  /** The command's own options (connection flags, `--json` and `--help` are added to every command). */
  readonly options: Readonly<Record<string, OptionSpec>>;
  /** Copy-paste examples, shown by `--help` (at least one). */
  readonly examples: readonly string[];
  /** Whether a child command after `--` is required, optional or not accepted. */
  readonly child: 'required' | 'optional' | 'none';
  /**
   * Checks arguments and runs. Throws {@link UsageError} for a bad command
   * line before touching etcd; resolves with the process's exit code.
   */
  run(ctx: CommandContext): Promise<number>;
}
