import { DEFAULT_SERVICE_ROOT, isRecipeError, ServiceRegistry } from '../../index.js';
import { durationOption, expectArgs, flagOption, stringOption, stringsOption, ttlOption } from '../args.js';
import { runChild } from '../child.js';
import type { Command, OptionValues } from '../command.js';
import { CliExit, EXIT, UsageError } from '../exit-codes.js';
import { DEFAULT_KILL_AFTER_MS, LOSS_OPTIONS, waitEnded } from '../hold.js';
import { errorMessage, say } from '../output.js';

/** The `--root` option of the service commands. */
const ROOT_OPTION = {
  root: {
    type: 'string',
    value: 'PREFIX',
    help: `service directory: '' or ending with / (default ${DEFAULT_SERVICE_ROOT})`,
  },
} as const;

/** The options of the read-only service commands (`services`, `status`): `--watch` (with its help) and `--root`. */
export function watchAndRootOptions(watchHelp: string) {
  return { watch: { type: 'boolean', short: 'w', help: watchHelp }, ...ROOT_OPTION } as const;
}

/** `--root`, checked. @throws UsageError */
export function rootOption(values: OptionValues): string {
  const root = stringOption(values, 'root') ?? DEFAULT_SERVICE_ROOT;
  if (root !== '' && !root.endsWith('/'))
    throw new UsageError(`--root: must be '' or end with /, got ${JSON.stringify(root)}`);
  return root;
}

/** Throws a UsageError unless `service` is a service name (non-empty, no `/`). */
export function checkServiceArgument(service: string): void {
  if (service === '' || service.includes('/'))
    throw new UsageError(`SERVICE must be non-empty without /, got ${JSON.stringify(service)}`);
}

/** `register SERVICE ID ADDRESS -- CMD`: a registration sidecar. */
export const registerCommand: Command = {
  name: 'register',
  summary: 'keep a service instance registered while a command runs',
  usage: [
    'register SERVICE ID ADDRESS [--meta K=V ...] [--ttl S] [--replace] [--root PREFIX] [--kill-after S] ' +
      '-- CMD [ARGS...]',
  ],
  description: `Registers instance ID of SERVICE at ADDRESS (key <root>SERVICE/ID, a JSON value
with the address and metadata, attached to a lease), runs CMD, and deregisters
when CMD exits: a sidecar for services not written in Node. A lost lease (etcd
unreachable longer than --ttl) is re-registered as soon as etcd answers; CMD
keeps running. If another instance takes the ID (--replace) or the key is
deleted, CMD gets SIGTERM, then SIGKILL after --kill-after, and the tool exits
${EXIT.LOST}. An ID held by another live instance exits ${EXIT.NOT_ACQUIRED} unless --replace.
CMD gets ETCD_RECIPES_KEY. Exit code: CMD's own; ${EXIT.LOST} when displaced.`,
  options: {
    meta: { type: 'string', multiple: true, value: 'K=V', help: 'metadata entry (repeatable); values are strings' },
    ...LOSS_OPTIONS,
    ttl: {
      type: 'string',
      value: 'S',
      help: 'lease TTL in seconds: how long a dead instance stays listed (default 10)',
    },
    replace: { type: 'boolean', help: 'take the ID over from another live instance' },
    ...ROOT_OPTION,
  },
  examples: [
    'etcd-recipes register login 0001 10.0.0.7:8008 --meta version=1.4 --meta zone=a -- ./login-server --port 8008',
  ],
  child: 'required',
  async run(ctx) {
    expectArgs(ctx.args, ['SERVICE', 'ID', 'ADDRESS']);
    const [service, id, address] = ctx.args as [string, string, string];
    checkServiceArgument(service);
    const metadata: Record<string, string> = {};
    for (const entry of stringsOption(ctx.options, 'meta')) {
      const eq = entry.indexOf('=');
      if (eq <= 0) throw new UsageError(`--meta: expected K=V, got ${JSON.stringify(entry)}`);
      metadata[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
    const ttl = ttlOption(ctx.options, 10);
    const killAfterMs = durationOption(ctx.options, 'kill-after', DEFAULT_KILL_AFTER_MS, { min: 0 });
    const root = rootOption(ctx.options);
    const replace = flagOption(ctx.options, 'replace');
    const what = `registration ${root}${service}/${id}`;

    const client = await ctx.connect();
    let reg: ServiceRegistry;
    try {
      reg = await ServiceRegistry.register(client, {
        service,
        id,
        address,
        metadata,
        ttl,
        root,
        replace,
        signal: ctx.interrupts.signal,
      });
    } catch (err) {
      if (isRecipeError(err, 'SERVICE_ID_TAKEN')) throw new CliExit(EXIT.NOT_ACQUIRED, errorMessage(err));
      if (ctx.interrupts.signal.aborted)
        return waitEnded(ctx.interrupts.signal.reason, EXIT.NOT_ACQUIRED, ctx, what, undefined);
      throw err;
    }
    const displaced = new AbortController();
    reg.on('displaced', (info) =>
      displaced.abort(
        new Error(
          info.reason === 'deleted' ? 'its key was deleted' : `instance ID taken over by lease ${info.leaseId ?? '?'}`,
        ),
      ),
    );
    reg.on('lost', (err) => say(ctx.stderr, `${what}: lease lost (${err.message}); registering again`));
    reg.on('re-registered', () => say(ctx.stderr, `${what}: registered again`));
    reg.on('error', () => undefined);
    try {
      const result = await runChild({
        command: ctx.child,
        env: { ETCD_RECIPES_KEY: reg.key },
        lost: displaced.signal,
        killAfterMs,
        interrupts: ctx.interrupts,
        onLost: (reason) => say(ctx.stderr, `${what} displaced (${errorMessage(reason)}); stopping the command`),
        onSpawnError: (message) => say(ctx.stderr, message),
      });
      return result.lost ? EXIT.LOST : result.code;
    } finally {
      await reg
        .deregister()
        .catch((err: unknown) =>
          say(ctx.stderr, `${what}: deregister failed (${errorMessage(err)}); the key expires with its lease`),
        );
    }
  },
};
