import { Mutex } from '../../index.js';
import { expectArgs } from '../args.js';
import type { Command } from '../command.js';
import { EXIT } from '../exit-codes.js';
import { holdEnv, holdSettings, HOLD_OPTIONS, runWhileHolding } from '../hold.js';

/** `lock NAME -- CMD`: run a command while holding a Go- and etcdctl-compatible mutex. */
export const lockCommand: Command = {
  name: 'lock',
  summary: 'run a command while holding a lock (etcdctl lock compatible)',
  usage: ['lock NAME [--ttl S] [--timeout S | --try] [--kill-after S] -- CMD [ARGS...]'],
  description: `Waits for the mutex NAME (FIFO), runs CMD while holding it, and releases it
when CMD exits. Same keys as Go's concurrency.Mutex and \`etcdctl lock\`, so the
two exclude each other. CMD gets ETCD_RECIPES_KEY (the lock key),
ETCD_RECIPES_FENCING_TOKEN (its create revision), and ETCD_LOCK_KEY /
ETCD_LOCK_REV for scripts written for etcdctl (here ETCD_LOCK_REV is the
fencing token, the key's create revision). If the lock is lost (session
expired, key deleted) CMD gets SIGTERM, then SIGKILL after --kill-after, and
the tool exits ${EXIT.LOST}. SIGINT/SIGTERM/SIGHUP are forwarded to CMD.
Exit code: CMD's own; ${EXIT.NOT_ACQUIRED} (or --conflict-exit-code) when not acquired; ${EXIT.LOST} when lost.`,
  options: HOLD_OPTIONS,
  examples: [
    'etcd-recipes lock --try reports/nightly -- ./nightly.sh',
    'etcd-recipes lock --timeout 30 deploy/prod -- sh -c \'echo "token $ETCD_LOCK_REV"; ./deploy.sh\'',
  ],
  child: 'required',
  async run(ctx) {
    expectArgs(ctx.args, ['NAME']);
    const name = ctx.args[0]!;
    const settings = holdSettings(ctx.options);
    return runWhileHolding(
      ctx,
      settings,
      `lock ${name}`,
      (session, wait, signal) =>
        wait ? new Mutex(session, name).acquire({ signal }) : new Mutex(session, name).tryAcquire({ signal }),
      (held) => ({ ...holdEnv(held), ETCD_LOCK_KEY: held.key, ETCD_LOCK_REV: held.fencingToken.toString() }),
    );
  },
};
