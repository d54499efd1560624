import { spawn } from 'node:child_process';
import type { Interrupts } from './interrupts.js';
import { childExitCode, EXIT } from './exit-codes.js';

/** How to run and supervise one child command. */
export interface ChildOptions {
  /** The command and its arguments (looked up on PATH, run without a shell). */
  command: readonly string[];
  /** Variables added to the tool's environment. */
  env: Readonly<Record<string, string>>;
  /** Bytes to write to the child's stdin (then closed); default: the tool's stdin. */
  input?: Buffer;
  /**
   * Aborts when what the child runs under is lost: the child then gets
   * SIGTERM, and SIGKILL `killAfterMs` later if it is still running.
   */
  lost?: AbortSignal;
  killAfterMs: number;
  /** Signals to the tool are forwarded to the child while it runs. */
  interrupts: Interrupts;
  /** Called once with the loss reason, just before the child is sent SIGTERM. */
  onLost?: (reason: unknown) => void;
  /** Called with a line to show when the child cannot be started. */
  onSpawnError?: (message: string) => void;
}

/** How a child ended. */
export interface ChildResult {
  /** The shell-style exit code: its own code, 128 + signal number, or 126/127 when it could not be started. */
  code: number;
  /** True when `lost` aborted while it ran (it was sent SIGTERM). */
  lost: boolean;
}

/**
 * Runs `command` to completion and reports how it ended. While it runs, the
 * tool's SIGINT/SIGTERM/SIGHUP are forwarded to it, and a loss terminates it
 * (SIGTERM, then SIGKILL after `killAfterMs`). Never rejects.
 */
export function runChild(o: ChildOptions): Promise<ChildResult> {
  const [file, ...args] = o.command;
  return new Promise<ChildResult>((resolve) => {
    let lost = false;
    let killTimer: NodeJS.Timeout | undefined;
    let settled = false;
    const child = spawn(file!, args, {
      stdio: [o.input ? 'pipe' : 'inherit', 'inherit', 'inherit'],
      env: { ...process.env, ...o.env },
    });
    const stopForwarding = o.interrupts.listen((sig) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    });
    const onLost = () => {
      if (settled) return;
      lost = true;
      o.onLost?.(o.lost?.reason);
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), o.killAfterMs);
    };
    const finish = (result: ChildResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(killTimer);
      stopForwarding();
      o.lost?.removeEventListener('abort', onLost);
      resolve(result);
    };
    child.on('error', (err: NodeJS.ErrnoException) => {
      // Only a failed spawn has no pid; other errors (a failed kill) change nothing.
      if (child.pid !== undefined) return;
      const notFound = err.code === 'ENOENT';
      o.onSpawnError?.(`${file}: ${notFound ? 'command not found' : err.message}`);
      finish({ code: notFound ? EXIT.NOT_FOUND : EXIT.CANNOT_EXECUTE, lost: false });
    });
    child.on('exit', (code, signal) => finish({ code: childExitCode(code, signal), lost }));
    if (o.input && child.stdin) {
      // A child that does not read its stdin closes the pipe: not our failure.
      child.stdin.on('error', () => undefined);
      child.stdin.end(o.input);
    }
    if (o.lost?.aborted) onLost();
    else o.lost?.addEventListener('abort', onLost, { once: true });
  });
}
