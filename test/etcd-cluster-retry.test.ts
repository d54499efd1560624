import { afterEach, describe, expect, it, vi } from 'vitest';
import { createServer, type Server, type Socket } from 'node:net';
import { EtcdCluster } from '../src/testing/index.js';
import * as member from '../src/testing/member.js';
import { useCluster } from './helpers.js';

/*
 * EtcdCluster.start probes free ports, then etcd binds them; a port taken in
 * between must cost a retry on new ports, not a failed start or a shared etcd.
 * The port probe is replaced here so that the first probe hands out a port
 * that is already taken: by another cluster's etcd (which then answers
 * /health for ours) or by a plain listener (etcd cannot bind it).
 */
vi.mock('../src/testing/member.js', async (original) => {
  const real = await original<typeof import('../src/testing/member.js')>();
  return { ...real, freePort: vi.fn(real.freePort) };
});

const probe = vi.mocked(member.freePort);

/** The next probe returns `port`; later ones probe for real. */
function takenOnce(port: number): void {
  probe.mockImplementationOnce(async () => port);
}

describe('EtcdCluster start on a port taken after the probe', () => {
  const other = useCluster();
  let listener: Server | undefined;
  const sockets: Socket[] = [];
  let started: EtcdCluster | undefined;

  afterEach(async () => {
    await started?.stop();
    started = undefined;
    // Probes of ours may still hold connections to it: end them, or close() waits for them.
    for (const socket of sockets.splice(0)) socket.destroy();
    await new Promise<void>((resolve) => (listener ? listener.close(() => resolve()) : resolve()));
    listener = undefined;
  });

  async function startAndCheck(takenPort: number): Promise<void> {
    probe.mockClear();
    takenOnce(takenPort);
    started = await EtcdCluster.start();
    // Two ports per member: the first attempt probed two, the retry two more.
    expect(probe.mock.calls.length).toBeGreaterThanOrEqual(4);
    const m0 = started.members[0]!;
    expect(Number(new URL(m0.clientUrl).port)).not.toBe(takenPort);
    await expect(m0.checkIdentity()).resolves.toBeUndefined();
  }

  it('retries when another etcd answers on the client port', async () => {
    const theirs = other();
    const port = Number(new URL(theirs.members[0]!.clientUrl).port);
    await startAndCheck(port);
    // The other cluster's etcd was left alone and still answers as itself.
    await expect(theirs.members[0]!.checkIdentity()).resolves.toBeUndefined();
  });

  it('retries when a plain listener holds the client port', async () => {
    const server = createServer((socket) => sockets.push(socket));
    listener = server;
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
    });
    await startAndCheck(port);
    expect(server.listening).toBe(true);
  });
});
