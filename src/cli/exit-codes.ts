import { constants } from 'node:os';

/**
 * The tool's own exit codes. Anything else is the child's: its exit code, or
 * 128 + N when a signal N ended it (the shell's convention). The tool's codes
 * come from sysexits.h where one fits, so that they rarely collide with a
 * child's; "not acquired" can be chosen per call (`--conflict-exit-code`,
 * flock's `-E`) for scripts whose child uses 75 itself.
 */
export const EXIT = {
  /** Bad command line: unknown flag, missing argument, bad value. Nothing was written to etcd. */
  USAGE: 64,
  /** etcd could not be reached at any endpoint within the dial timeout. */
  UNAVAILABLE: 69,
  /** Any other failure of the tool (authentication, permission denied, an unexpected error). */
  ERROR: 70,
  /** Not acquired: `--try` found it taken, `--timeout` ran out, `queue pop --timeout` got nothing (EX_TEMPFAIL). */
  NOT_ACQUIRED: 75,
  /** Lost while the child ran: session expired, key deleted, leadership or registration lost. The child was stopped. */
  LOST: 79,
  /** The command exists but could not be run (permission, not executable), as in the shell. */
  CANNOT_EXECUTE: 126,
  /** The command was not found, as in the shell. */
  NOT_FOUND: 127,
} as const;

/** The exit code a shell would report for a child that exited with `code` or was ended by `signal`. */
export function childExitCode(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  const n = signal ? constants.signals[signal] : undefined;
  return n === undefined ? EXIT.ERROR : 128 + n;
}

/**
 * Thrown anywhere in a command to end the tool with `code` after printing
 * `message` (one line, on stderr) when there is one.
 */
export class CliExit extends Error {
  readonly code: number;
  constructor(code: number, message = '') {
    super(message);
    this.name = 'CliExit';
    this.code = code;
  }
}

/** A bad command line: exits with {@link EXIT.USAGE}. */
export class UsageError extends CliExit {
  constructor(message: string) {
    super(EXIT.USAGE, message);
    this.name = 'UsageError';
  }
}
