// npm run demo: several worker processes take turns on one etcd lock, each
// printing its fencing token. One worker is killed (SIGKILL) while it holds
// the lock; the others carry on once its lease expires.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
const workerScript = fileURLToPath(new URL('./demo-worker.ts', import.meta.url));
const names = ['worker-1', 'worker-2', 'worker-3'];
const victim = 'worker-2';
let killedAt: number | undefined;

try {
  await etcd.client.delete().prefix('demo/');
  const exits = names.map((name) => {
    const child = spawn(process.execPath, ['--import', 'tsx', workerScript, name, etcd.endpoints.join(','), '3'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const since = killedAt === undefined ? '' : ` (+${Math.round(performance.now() - killedAt)} ms after the kill)`;
      console.log(`  ${line}${since}`);
      // Kill the victim in the middle of its second turn, while it holds the lock.
      if (name === victim && killedAt === undefined && /acquired .* \(round 2\)/.test(line)) {
        child.kill('SIGKILL');
        killedAt = performance.now();
        console.log(
          `>> killed ${victim} (SIGKILL) while it held the lock; its lease (TTL 2 s) will expire and free it`,
        );
      }
    });
    return new Promise<void>((resolve) =>
      child.on('exit', (code, signal) => {
        console.log(`>> ${name} exited (${signal ?? `code ${code}`})`);
        resolve();
      }),
    );
  });
  await Promise.all(exits);
  console.log(`>> last fenced write: ${await etcd.client.get('demo/report').string()}`);
} finally {
  await etcd.close();
}
