// A small bank on etcd: concurrent transfers with runSTM, an idempotent transfer,
// and a consistent audit. Run: npx tsx examples/stm-bank.ts
// (uses ETCD_ENDPOINTS, or starts a throwaway etcd)
import { Etcd3 } from 'etcd3';
import { isRecipeError, runSTM, type STMTransaction } from 'etcd-recipes';
import { exampleEtcd } from './etcd.js';

interface Account {
  owner: string;
  balance: number;
}

const etcd = await exampleEtcd();
const connections: Etcd3[] = [];
try {
  const { client } = etcd;
  const bank = client.namespace('examples/bank/'); // every key below lives under this prefix
  const ids = ['alice', 'bob', 'carol', 'dave'];

  // Open the accounts (one transaction, four writes).
  await runSTM(bank, (tx) => {
    for (const id of ids) tx.putJSON(`accounts/${id}`, { owner: id, balance: 100 } satisfies Account);
  });

  // A transfer. `fn` may run several times (on conflicts), so it does nothing but
  // read and write through `tx`: no logging, no side effects.
  async function move(tx: STMTransaction, from: string, to: string, amount: number): Promise<boolean> {
    const [a, b] = await Promise.all([
      // read together: one round trip
      tx.getJSON<Account>(`accounts/${from}`),
      tx.getJSON<Account>(`accounts/${to}`),
    ]);
    if (!a || !b) throw new Error(`no such account: ${!a ? from : to}`); // aborts, commits nothing
    if (a.balance < amount) return false;
    tx.putJSON(`accounts/${from}`, { ...a, balance: a.balance - amount });
    tx.putJSON(`accounts/${to}`, { ...b, balance: b.balance + amount });
    return true;
  }

  // 1. Concurrent transfers from four connections (four processes, in real life).
  let done = 0;
  let refused = 0;
  await Promise.all(
    ids.map(async () => {
      const connection = new Etcd3({ hosts: etcd.endpoints });
      connections.push(connection);
      const myBank = connection.namespace('examples/bank/');
      for (let i = 0; i < 25; i++) {
        const from = ids[Math.floor(Math.random() * ids.length)]!;
        const to = ids.filter((x) => x !== from)[Math.floor(Math.random() * (ids.length - 1))]!;
        const amount = 1 + Math.floor(Math.random() * 30);
        try {
          if (await runSTM(myBank, (tx) => move(tx, from, to, amount), { retries: 20 })) done++;
          else refused++;
        } catch (err) {
          if (!isRecipeError(err, 'STM_CONFLICT')) throw err;
          const { attempts, keys } = err; // narrowed to STMConflictError by the code
          console.log(`gave up on ${from} -> ${to} after ${attempts} attempts (conflicts on ${keys.join(', ')})`);
        }
      }
    }),
  );
  console.log(`${done} transfers done, ${refused} refused for lack of money`);

  // 2. A read-only audit: every balance from one snapshot, so the sum is exact
  //    even while transfers are running (no commit is needed for it).
  const audit = await runSTM(bank, async (tx) => {
    const accounts = await Promise.all(ids.map((id) => tx.getJSON<Account>(`accounts/${id}`)));
    return accounts.map((a) => `${a!.owner}=${a!.balance}`);
  });
  const total = audit.reduce((sum, entry) => sum + Number(entry.split('=')[1]), 0);
  console.log(`audit: ${audit.join(' ')}; total ${total} (opened with ${ids.length * 100})`);

  // 3. An idempotent transfer: its id is written in the same commit. If runSTM
  //    rejects with a connection error, the commit may or may not have landed;
  //    running the same transfer id again is then safe.
  const pay = (transferId: string, from: string, to: string, amount: number) =>
    runSTM(bank, async (tx) => {
      if ((await tx.get(`transfers/${transferId}`)) !== undefined) return 'already done';
      const moved = await move(tx, from, to, amount);
      tx.putJSON(`transfers/${transferId}`, { from, to, amount, moved });
      return moved ? 'paid' : 'refused';
    });
  console.log(`invoice 42: ${await pay('invoice-42', 'alice', 'bob', 5)}`);
  console.log(`invoice 42 again: ${await pay('invoice-42', 'alice', 'bob', 5)}`);

  // 4. A transaction that fails on purpose: nothing of it is committed.
  await runSTM(bank, (tx) => move(tx, 'alice', 'mallory', 1)).catch((err: Error) =>
    console.log(`refused: ${err.message}`),
  );
} finally {
  for (const c of connections) c.close();
  await etcd.close();
}
