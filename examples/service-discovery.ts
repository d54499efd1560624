// Service registration and discovery: three "login" instances (separate processes) register,
// one of them is killed, and a gateway keeps picking among the live ones.
// Run: npx tsx examples/service-discovery.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { ServiceDiscovery, ServiceRegistry } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

if (process.argv[2] === 'instance') {
  // ---- One service instance: registers, then serves until told to stop. ----
  const [, , , endpoints, id, address, zone] = process.argv;
  const client = new Etcd3({ hosts: endpoints!.split(',') });
  // The TTL is the heartbeat: if this process dies, its key disappears TTL seconds later.
  const registration = await ServiceRegistry.register(client, {
    service: 'login',
    id: id!,
    address: address!,
    metadata: { zone: zone! },
    ttl: 2,
  });
  registration.on('lost', (err) => console.log(`${id}: registration lost (${err.message}); re-registering`));
  console.log(`${id}: registered ${registration.key}`);
  process.on('SIGTERM', () => {
    // A clean shutdown deregisters at once.
    void registration.deregister().then(() => {
      client.close();
      process.exit(0);
    });
  });
  setInterval(() => undefined, 1 << 30);
} else {
  // ---- The gateway. ----
  const etcd = await exampleEtcd();
  const children: ReturnType<typeof spawn>[] = [];
  try {
    const gateway = new ServiceDiscovery<{ zone: string }>(etcd.client, 'login');
    await gateway.ready();
    gateway.on('change', ({ type, instance }) => console.log(`gateway: ${type} ${instance.id} at ${instance.address}`));

    for (const [i, zone] of ['a', 'b', 'a'].entries()) {
      const child = spawn(
        process.execPath,
        [
          ...process.execArgv,
          fileURLToPath(import.meta.url),
          'instance',
          etcd.endpoints.join(','),
          `login-${i + 1}`,
          `10.0.0.${i + 1}:8008`,
          zone,
        ],
        { stdio: ['ignore', 'inherit', 'inherit'] },
      );
      children.push(child);
    }
    // Each registration reaches the gateway as one watch event.
    while (gateway.size < 3) await new Promise((resolve) => gateway.once('change', resolve));

    const route = (n: number) => Array.from({ length: n }, () => gateway.pick()?.id ?? 'none').join(', ');
    console.log(`round-robin: ${route(6)}`);

    // login-2 is killed: no chance to deregister. Its key stays until its lease's TTL runs
    // out; then etcd deletes it and the gateway stops routing to it.
    console.log('killing login-2 with SIGKILL...');
    const killedAt = performance.now();
    children[1]!.kill('SIGKILL');
    await new Promise<void>((resolve) =>
      gateway.on('change', (c) => {
        if (c.type === 'removed') resolve();
      }),
    );
    console.log(`login-2 gone after ${((performance.now() - killedAt) / 1000).toFixed(1)} s`);
    console.log(`round-robin: ${route(4)}`);
    console.log(`random:      ${Array.from({ length: 4 }, () => gateway.pick({ strategy: 'random' })!.id).join(', ')}`);
    console.log(
      `live:        ${gateway
        .instances()
        .map((i) => `${i.id}@${i.address} (zone ${i.metadata.zone})`)
        .join(', ')}`,
    );

    // The others shut down cleanly: their keys go at once.
    const stopped = Promise.all(
      [children[0]!, children[2]!].map((c) => new Promise((resolve) => c.once('exit', resolve))),
    );
    children[0]!.kill('SIGTERM');
    children[2]!.kill('SIGTERM');
    await stopped;
    while (gateway.size > 0) await new Promise((resolve) => gateway.once('change', resolve));
    console.log(`after clean shutdown: ${gateway.size} instances`);
    await gateway.close();
  } finally {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await etcd.close();
  }
}
