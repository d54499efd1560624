import { describe, expect, it } from 'vitest';
import { isRecipeError, runSTM, type STMIsolation } from '../src/index.js';
import type { EtcdMember } from '../src/testing/index.js';
import { useCluster, within } from './helpers.js';
import { balances, openAccounts, randomPair } from './stm-helpers.js';

interface Entry {
  from?: string;
  to?: string;
  amount?: number;
  skipped?: boolean;
}

describe('runSTM in a 3-member cluster when the Raft leader is killed mid-run', () => {
  const etcd = useCluster({ members: 3 });

  it.each(['serializable-snapshot', 'serializable', 'repeatable-reads'] as STMIsolation[])(
    'every transfer applies exactly once and the total is conserved (%s)',
    async (isolation) => {
      const cluster = etcd();
      const admin = cluster.client();
      const p = `faults-${isolation}/`;
      const accounts = await openAccounts(admin, `${p}acct/`, 100, 100);
      const workers = 5;
      const transfersEach = 30;
      let completed = 0;
      let completedAfterKill = 0;
      let errorsRetried = 0;
      let alreadyApplied = 0;
      let killed: Promise<EtcdMember> | undefined;
      let killDone = false;

      // An idempotent transfer: its ledger key, written in the same commit, says it happened.
      // A caller that saw an ambiguous error (a commit whose reply was lost) simply runs it again.
      const transferOnce = (
        client: ReturnType<typeof cluster.client>,
        id: string,
        from: string,
        to: string,
        amount: number,
      ) =>
        runSTM(
          client,
          async (tx) => {
            const ledgerKey = `${p}ledger/${id}`;
            const [done, a, b] = await Promise.all([tx.get(ledgerKey), tx.get(from), tx.get(to)]);
            if (done !== undefined) return 'already applied';
            if (Number(a) < amount) {
              tx.putJSON(ledgerKey, { skipped: true } satisfies Entry);
              return 'skipped';
            }
            tx.put(from, String(Number(a) - amount));
            tx.put(to, String(Number(b) + amount));
            tx.putJSON(ledgerKey, { from, to, amount } satisfies Entry);
            return 'moved';
          },
          { isolation },
        );

      await within(
        90_000,
        Promise.all(
          Array.from({ length: workers }, async (_, w) => {
            const client = cluster.client();
            for (let n = 0; n < transfersEach; n++) {
              const [i, j] = randomPair(accounts.length);
              const amount = 1 + Math.floor(Math.random() * 60);
              const id = `w${w}-${String(n).padStart(2, '0')}`;
              for (let attempt = 1; ; attempt++) {
                try {
                  const outcome = await transferOnce(client, id, accounts[i]!, accounts[j]!, amount);
                  if (outcome === 'already applied') alreadyApplied++;
                  break;
                } catch (err) {
                  // Conflicts past the retry limit and transport errors while the cluster
                  // re-elects are retried by the caller; anything else is a bug.
                  if (isRecipeError(err) && !isRecipeError(err, 'STM_CONFLICT')) throw err;
                  if (attempt >= 100) throw err;
                  errorsRetried++;
                  await new Promise((r) => setTimeout(r, 25));
                }
              }
              completed++;
              if (killDone) completedAfterKill++;
              // Kill the leader once, a little way into the run, with every worker busy.
              if (completed === 25) {
                killed = cluster.leader().then(async (leader) => {
                  await leader.kill();
                  killDone = true;
                  return leader;
                });
              }
            }
          }),
        ),
        'transfers',
      );
      const victim = await killed!;

      // Exactly once: one ledger entry per transfer, and replaying the ledger gives today's balances.
      const ledger = Object.values(await admin.getAll().prefix(`${p}ledger/`).strings()).map(
        (v) => JSON.parse(v) as Entry,
      );
      expect(ledger).toHaveLength(workers * transfersEach);
      const expected = new Map(accounts.map((k) => [k, 100]));
      for (const e of ledger) {
        if (e.skipped) continue;
        expected.set(e.from!, expected.get(e.from!)! - e.amount!);
        expected.set(e.to!, expected.get(e.to!)! + e.amount!);
      }
      const actual = await balances(admin, `${p}acct/`);
      expect(actual).toEqual(expected);
      expect([...actual.values()].reduce((a, b) => a + b, 0)).toBe(100 * 100);
      for (const v of actual.values()) expect(v).toBeGreaterThanOrEqual(0);
      expect(completedAfterKill).toBeGreaterThan(0);
      console.log(
        `${isolation}: ${completed} transfers, ${completedAfterKill} after the leader died, ` +
          `${errorsRetried} caller retries, ${alreadyApplied} found already applied on a caller retry`,
      );

      // Bring the member back for the next run.
      await victim.restart();
      await cluster.waitHealthy();
    },
  );
});
