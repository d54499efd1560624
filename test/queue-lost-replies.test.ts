import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { PriorityQueue, Queue, Session, WorkQueue } from '../src/index.js';
import { keysUnder, useCluster } from './helpers.js';

/*
 * A Txn can commit while its reply is lost (a leader dies after the commit,
 * a connection drops). etcd3 and our own retry then send it again, and the
 * retry fails its compare although the first try succeeded. These tests let
 * real Txns commit and then throw the reply away, and check that no item is
 * dropped or delivered twice because of it.
 */

type TxnFn = (req: unknown) => Promise<unknown>;

interface RawTxn {
  compare?: { target: string }[];
  success?: Record<string, { key?: Buffer } | undefined>[];
}

/** Makes the next `times` Txns that match `which` commit and then fail as if the connection dropped. */
function loseReplies(client: Etcd3, which: (req: RawTxn) => boolean, times = 1): { lost: () => number } {
  const kv = client.kv as unknown as { txn: TxnFn };
  const real = kv.txn.bind(kv);
  let lost = 0;
  kv.txn = async (req: unknown) => {
    const res = await real(req);
    if (lost < times && which(req as RawTxn)) {
      lost++;
      throw new Error('14 UNAVAILABLE: Connection dropped (injected after commit)');
    }
    return res;
  };
  return { lost: () => lost };
}

/** A Txn whose success branch puts (or deletes) a key under `prefix`. */
const writes = (kind: 'request_put' | 'request_delete_range', prefix: string) => (req: RawTxn) =>
  !!req.success?.some((op) => op[kind]?.key?.toString().startsWith(prefix));
const puts = (prefix: string) => writes('request_put', prefix);
const deletes = (prefix: string) => writes('request_delete_range', prefix);

describe('lost Txn replies', () => {
  const etcd = useCluster();

  it('Queue: a claim that committed is recognised by its receipt; the item is delivered once', async () => {
    const client = etcd().client();
    const q = new Queue(client, 'lr-q');
    for (const v of ['a', 'b', 'c']) await q.enqueue(v);
    const fault = loseReplies(client, deletes('lr-q/'));
    expect([await q.dequeue(), await q.dequeue(), await q.dequeue()]).toEqual(['a', 'b', 'c']);
    expect(fault.lost()).toBe(1);
    expect(await q.size()).toBe(0);
    await q.close();
    expect(await keysUnder(client, '__lr-q/')).toEqual([]);
  });

  it('Queue: an enqueue that committed is not enqueued twice', async () => {
    const client = etcd().client();
    const q = new Queue(client, 'lr-e');
    const fault = loseReplies(client, puts('lr-e/'));
    await q.enqueue('once');
    expect(fault.lost()).toBe(1);
    expect(await q.size()).toBe(1);
  });

  it('PriorityQueue: an enqueue that committed is not enqueued twice, nor given a second number', async () => {
    const client = etcd().client();
    const q = new PriorityQueue(client, 'lr-p');
    await q.enqueue('first', 1);
    const fault = loseReplies(client, puts('lr-p/'));
    expect(await q.enqueue('same', 1)).toBe('lr-p/00001/0000000000000001');
    expect(fault.lost()).toBe(1);
    // A different producer enqueued the same value meanwhile: both items stay.
    expect(await keysUnder(client, 'lr-p/')).toEqual(['lr-p/00001/0000000000000000', 'lr-p/00001/0000000000000001']);
    expect(await new PriorityQueue(etcd().client(), 'lr-p').enqueue('same', 1)).toBe('lr-p/00001/0000000000000002');
    expect(await q.size()).toBe(3);
  });

  it('WorkQueue: a claim and an ack that committed are recognised', async () => {
    const client = etcd().client();
    await using session = await Session.create(client, { ttl: 10 });
    const wq = new WorkQueue(session, 'lr-w');
    await wq.add('job');
    const claimFault = loseReplies(client, puts('lr-w/claims/'));
    const job = await wq.claim();
    expect(claimFault.lost()).toBe(1);
    expect(job.attempts).toBe(1);
    expect(await wq.stats()).toMatchObject({ jobs: 1, claimed: 1 });
    const ackFault = loseReplies(client, deletes('lr-w/jobs/'));
    await job.ack();
    expect(ackFault.lost()).toBe(1);
    await wq.close();
    expect(await keysUnder(client, 'lr-w/')).toEqual([]);
  });
});
