// Several locks at once: tellers move money between two accounts, each transfer holding both
// accounts' locks. They list the accounts in whatever order; withLocks takes locks in one global
// order, so two transfers a->b and b->a never deadlock. The write is fenced by both locks.
// Run: npx tsx examples/multi-lock.ts   (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { Session, withLocks } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

const etcd = await exampleEtcd();
const { client } = etcd;
const prefix = `multi-lock-example-${process.pid}`;
try {
  const accounts = ['alice', 'bob', 'carol'];
  for (const a of accounts) await client.put(`${prefix}/balance/${a}`).value('100').exec();

  // One session per teller, reused for every transfer (withLocks without `session` would grant
  // and revoke a lease per call).
  const teller = async (name: string, transfers: number) => {
    await using session = await Session.create(client, { ttl: 10 });
    for (let i = 0; i < transfers; i++) {
      const from = accounts[Math.floor(Math.random() * accounts.length)]!;
      const to = accounts.filter((a) => a !== from)[Math.floor(Math.random() * 2)]!;
      await withLocks(
        client,
        [`${prefix}/lock/${from}`, `${prefix}/lock/${to}`],
        async ({ ifOwner, names, fencingTokens }) => {
          const [a, b] = await Promise.all([from, to].map((acct) => client.get(`${prefix}/balance/${acct}`).number()));
          const amount = Math.min(a ?? 0, 1 + Math.floor(Math.random() * 20));
          // Lands only while both locks are held, however long this process was paused.
          const res = await ifOwner()
            .then(
              client.put(`${prefix}/balance/${from}`).value(String((a ?? 0) - amount)),
              client.put(`${prefix}/balance/${to}`).value(String((b ?? 0) + amount)),
            )
            .commit();
          if (i === 0)
            console.log(
              `${name}: locked ${names.join(' + ')} (tokens ${fencingTokens.join(', ')}), ` +
                `moved ${amount} ${from} -> ${to}: ${res.succeeded}`,
            );
        },
        { session },
      );
    }
  };
  await Promise.all([teller('teller-1', 20), teller('teller-2', 20), teller('teller-3', 20)]);

  const balances = await client.getAll().prefix(`${prefix}/balance/`).strings();
  const total = Object.values(balances).reduce((s, v) => s + Number(v), 0);
  console.log('balances:', balances, 'total:', total);
  if (total !== 300) throw new Error(`money was created or lost: ${total}`);
  await client.delete().prefix(`${prefix}/`).exec();
} finally {
  await etcd.close();
}
