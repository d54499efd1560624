import { ServiceDiscovery, type ServiceInstance } from '../../index.js';
import { expectArgs, flagOption } from '../args.js';
import type { Command } from '../command.js';
import { printJson, toJson } from '../output.js';
import { checkServiceArgument, rootOption, watchAndRootOptions } from './register.js';

function instanceJson(i: ServiceInstance): Record<string, unknown> {
  return {
    id: i.id,
    address: i.address,
    metadata: i.metadata,
    key: i.key,
    lease: i.leaseId,
    revision: i.revision,
    registeredAt: i.registeredAt?.toISOString(),
  };
}

/** `services SERVICE [--watch]`: list (or follow) a service's instances. */
export const servicesCommand: Command = {
  name: 'services',
  summary: 'list the live instances of a service, or follow changes',
  usage: ['services SERVICE [--watch] [--root PREFIX]'],
  description: `Lists the instances registered for SERVICE (by \`register\` or the library's
ServiceRegistry), one per line: ID, address and metadata (JSON), tab-separated;
with --json, one JSON object per line. With --watch, prints one JSON line per
instance now ({"type":"added",...}), then one per change ("added", "updated",
"removed") until interrupted.`,
  options: watchAndRootOptions('follow changes as JSON lines'),
  examples: ['etcd-recipes services login', 'etcd-recipes services login --watch'],
  child: 'none',
  async run(ctx) {
    expectArgs(ctx.args, ['SERVICE']);
    const service = ctx.args[0]!;
    checkServiceArgument(service);
    const root = rootOption(ctx.options);
    const client = await ctx.connect();
    const discovery = new ServiceDiscovery(client, service, { root });
    discovery.on('error', () => undefined);
    try {
      if (!flagOption(ctx.options, 'watch')) {
        await discovery.ready({ signal: ctx.interrupts.signal });
        for (const i of discovery.instances()) {
          if (ctx.json) printJson(ctx.stdout, instanceJson(i));
          else ctx.stdout.write(`${i.id}\t${i.address}\t${toJson(i.metadata)}\n`);
        }
        return 0;
      }
      // Both handlers run synchronously in the cache's event order: the list and the changes after it
      // join without a gap.
      let listed = false;
      const list = () => {
        if (listed) return;
        listed = true;
        for (const i of discovery.instances()) printJson(ctx.stdout, { type: 'added', ...instanceJson(i) });
      };
      discovery.on('ready', list);
      discovery.on('change', (c) => {
        if (!listed) return;
        printJson(ctx.stdout, {
          type: c.type,
          ...instanceJson(c.instance),
          revision: c.revision,
          ...(c.resync ? { resync: true } : {}),
        });
      });
      if (discovery.isReady) list();
      await new Promise<void>((resolve) => {
        if (ctx.interrupts.signal.aborted) resolve();
        ctx.interrupts.signal.addEventListener('abort', () => resolve(), { once: true });
        discovery.once('closed', () => resolve());
      });
      return 0;
    } finally {
      await discovery.close();
    }
  },
};
