import { describe, expect, it } from 'vitest';
import { findEtcdBinary } from '../src/testing/index.js';
import { EtcdMember, PortTakenError } from '../src/testing/member.js';
import { useCluster } from './helpers.js';

/*
 * EtcdCluster probes free ports, then etcd binds them: another process's etcd
 * can take one in between. Its /health then answers for our member, which is
 * about to exit for want of the port, and the tests would share an etcd.
 * Start checks, from etcd's own member list, that the etcd answering on each
 * client port is the member started there.
 */
describe('EtcdCluster start', () => {
  const ours = useCluster();
  const theirs = useCluster();

  it('tells its own member from another etcd answering on the same port', async () => {
    const member = ours().members[0]!;
    await expect(member.checkIdentity()).resolves.toBeUndefined();
    // A member started with its own peer URL, whose client port another etcd holds.
    const impostor = new EtcdMember(
      findEtcdBinary(),
      'm0',
      { client: Number(new URL(theirs().members[0]!.clientUrl).port), peer: Number(new URL(member.peerUrl).port) },
      member.dataDir,
      ['--initial-advertise-peer-urls', member.peerUrl],
    );
    await expect(impostor.checkIdentity()).rejects.toThrow(PortTakenError);
    await expect(impostor.checkIdentity()).rejects.toThrow(/another etcd answers on 127\.0\.0\.1:\d+/);
  });
});
