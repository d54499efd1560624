import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { setMaxListeners } from 'node:events';
import { closeClient, createClient } from '../../src/index.js';
import { benchClientOptions } from '../lib.js';
import type { FromWorker, ToWorker } from './protocol.js';
import { scenarios, type Runner } from './scenarios.js';

/*
 * A benchmark worker process (started by WorkerGroup over IPC). It builds
 * its part of a scenario on `setup`, answers `ready` once its clients are
 * connected, runs on `run` until the deadline, and reports its counts and
 * its own CPU time for the run. With BENCH_PROFILE_DIR set (the process then
 * runs under --cpu-prof), it also notes the run's window on the profile's
 * clock (process.hrtime, µs), so the summary can leave setup out.
 */

// tsx turns source maps on; a user's compiled build runs without them, and with them every
// stack trace grpc-js captures per call costs a source-map lookup.
process.setSourceMapsEnabled(false);
// Hundreds of recipe objects share a session's or a client's signal here; that is no leak.
setMaxListeners(10_000);

const clients: Etcd3[] = [];
let runner: Runner | undefined;
const windows: [number, number][] = [];

function send(msg: FromWorker): void {
  process.send!(msg);
}

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.type) {
    case 'setup': {
      const make = scenarios[msg.scenario];
      if (!make) throw new Error(`unknown scenario ${msg.scenario}`);
      runner = await make(
        {
          endpoints: msg.endpoints,
          proc: msg.proc,
          procs: msg.procs,
          client: () => {
            const c = createClient(benchClientOptions(msg.endpoints));
            clients.push(c);
            return c;
          },
        },
        msg.params as never,
      );
      send({ type: 'ready' });
      return;
    }
    case 'run': {
      const t0 = process.hrtime.bigint();
      const cpu = process.cpuUsage();
      const partial = await runner!.run(msg.endAt);
      const used = process.cpuUsage(cpu);
      if (!msg.warmUp) windows.push([Number(t0 / 1000n), Number(process.hrtime.bigint() / 1000n)]);
      send({ type: 'report', report: { ...partial, cpuMs: (used.user + used.system) / 1000 } });
      return;
    }
    case 'close': {
      await runner?.close();
      await Promise.all(clients.map((c) => closeClient(c)));
      const dir = process.env.BENCH_PROFILE_DIR;
      if (dir) writeFileSync(join(dir, `${process.pid}.windows.json`), JSON.stringify(windows));
      // Exit at once (--cpu-prof writes its profile on exit), whatever handle a library left open.
      process.send!({ type: 'closed' } satisfies FromWorker, () => process.exit(0));
      return;
    }
  }
}

process.on('message', (msg: ToWorker) => {
  handle(msg).catch((err: unknown) => {
    send({ type: 'error', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  });
});
