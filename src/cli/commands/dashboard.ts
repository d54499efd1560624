import { startDashboard } from '../../index.js';
import { expectArgs } from '../args.js';
import type { Command } from '../command.js';
import { UsageError } from '../exit-codes.js';

/** `dashboard`: a read-only web page of everything under a prefix, live. */
export const dashboardCommand: Command = {
  name: 'dashboard',
  summary: 'serve a read-only live page of the locks, leaders, queues and services under a prefix',
  usage: ['dashboard [--prefix P] [--port N] [--host H --exposed --token T]'],
  description: `Serves one page (server-sent events) showing every lock, election, semaphore,
queue, work queue and service under --prefix, with holders and waiters. It
never writes to etcd. It binds to 127.0.0.1; another interface needs --exposed
and a --token, checked on every request (see docs/security.md). Runs until
interrupted.`,
  options: {
    prefix: { type: 'string', value: 'P', help: 'the key prefix to show (default: everything)' },
    port: { type: 'string', value: 'N', help: 'port (default 0: a free one, printed)' },
    host: { type: 'string', value: 'H', help: 'interface to bind (default 127.0.0.1)' },
    exposed: { type: 'boolean', help: 'allow binding an interface other than loopback (needs --token)' },
    token: { type: 'string', value: 'T', help: 'require this token (Authorization: Bearer T, or ?token=T)' },
  },
  examples: ['etcd-recipes dashboard --prefix jobs/ --port 8080'],
  child: 'none',
  async run(ctx) {
    expectArgs(ctx.args, []);
    const portText = (ctx.options.port as string | undefined) ?? '0';
    const port = Number(portText);
    if (!/^[0-9]+$/.test(portText) || port > 65535) throw new UsageError('--port must be a port number (0-65535)');
    const token = ctx.options.token as string | undefined;
    const client = await ctx.connect();
    const dashboard = await startDashboard(client, {
      prefix: (ctx.options.prefix as string | undefined) ?? '',
      port,
      host: ctx.options.host as string | undefined,
      exposed: ctx.options.exposed === true,
      token,
    });
    ctx.stdout.write(`${dashboard.url}${token ? '?token=<token>' : ''}\n`);
    await new Promise<void>((resolve) => {
      if (ctx.interrupts.signal.aborted) resolve();
      else ctx.interrupts.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await dashboard.close();
    return 0;
  },
};
