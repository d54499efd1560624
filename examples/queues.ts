// A mail sender fed by two queues: a FIFO Queue of newsletters and a
// PriorityQueue of transactional mail (lower number first).
// Run: npx tsx examples/queues.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { PriorityQueue, Queue } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
try {
  const { client } = etcd;
  await using newsletters = new Queue(client, 'queues/newsletter');
  await using urgent = new PriorityQueue(client, 'queues/transactional');

  // Producers.
  for (const n of ['issue-41', 'issue-42', 'issue-43']) await newsletters.enqueue(n);
  await urgent.enqueue('weekly digest', 10);
  await urgent.enqueue('password reset for ann', 0);
  await urgent.enqueue('receipt for order 7', 5);
  console.log(`queued: ${await newsletters.size()} newsletters, ${await urgent.size()} transactional`);

  // Consumers: dequeue blocks while a queue is empty; give up after a while with a signal.
  for (let i = 0; i < 3; i++) console.log(`transactional: ${await urgent.dequeue()}`);
  for (let i = 0; i < 3; i++) console.log(`newsletter:    ${await newsletters.dequeue()}`);

  // A blocked dequeue, woken by a producer that enqueues a moment later.
  setTimeout(() => void newsletters.enqueue('issue-44'), 200);
  console.log(`newsletter (waited): ${await newsletters.dequeue({ signal: AbortSignal.timeout(10_000) })}`);

  // Nothing left: a timeout ends the wait, and no key of ours is left behind.
  const err = await newsletters.dequeue({ signal: AbortSignal.timeout(300) }).catch((e: Error) => e);
  console.log(`empty queue: ${(err as Error).name}`);
} finally {
  await etcd.close();
}
