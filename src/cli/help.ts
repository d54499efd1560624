import type { Command, OptionSpec } from './command.js';
import { CONNECTION_OPTIONS } from './connection.js';
import { EXIT } from './exit-codes.js';
import { PROGRAM } from './output.js';

/** Flags every command takes besides the connection flags. */
export const COMMON_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  json: { type: 'boolean', help: 'machine-readable output (JSON lines)' },
  help: { type: 'boolean', short: 'h', help: 'show help for the command' },
};

function optionLines(options: Readonly<Record<string, OptionSpec>>): string[] {
  const rows = Object.entries(options).map(([name, o]) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${name}${o.value ? ` ${o.value}` : ''}`;
    return [flag, o.help] as const;
  });
  const width = Math.max(...rows.map(([f]) => f.length)) + 2;
  return rows.map(([f, h]) => `  ${f.padEnd(width)}${h}`);
}

const EXIT_CODES = `Exit codes: the command's own (128+N if signal N ended it); ${EXIT.USAGE} usage error;
${EXIT.UNAVAILABLE} etcd unreachable; ${EXIT.ERROR} other error; ${EXIT.NOT_ACQUIRED} not acquired (--try, --timeout;
--conflict-exit-code N to choose); ${EXIT.LOST} lost while the command ran; ${EXIT.NOT_FOUND} command not
found; ${EXIT.CANNOT_EXECUTE} command not executable.`;

/** The `--help` text of one command. */
export function commandHelp(c: Command): string {
  const lines = [...c.usage.map((u, i) => `${i === 0 ? 'Usage:' : '      '} ${PROGRAM} ${u}`), '', c.description, ''];
  if (Object.keys(c.options).length > 0) lines.push('Options:', ...optionLines(c.options), '');
  lines.push(
    'Connection and output (every command):',
    ...optionLines({ ...CONNECTION_OPTIONS, ...COMMON_OPTIONS }),
    '',
  );
  lines.push(c.examples.length > 1 ? 'Examples:' : 'Example:', ...c.examples.map((e) => `  ${e}`), '');
  lines.push(EXIT_CODES, '');
  return lines.join('\n');
}

/** The tool's `--help` text. */
export function programHelp(commands: readonly Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length)) + 2;
  return [
    `Usage: ${PROGRAM} COMMAND [ARGS...] [OPTIONS] [-- CMD [ARGS...]]`,
    '',
    'Distributed locks, semaphores, leader election, queues and service registration',
    'on etcd v3, for shell scripts, cron and systemd.',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    '',
    'Connection and output (every command):',
    ...optionLines({ ...CONNECTION_OPTIONS, ...COMMON_OPTIONS }),
    '',
    'Example:',
    `  ${PROGRAM} lock --try reports/nightly -- ./nightly.sh`,
    '',
    `Run '${PROGRAM} COMMAND --help' for a command's options and examples.`,
    '',
    EXIT_CODES,
    '',
  ].join('\n');
}
