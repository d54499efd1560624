import type { Etcd3 } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { isRecipeError, runSTM, type STMIsolation } from '../src/index.js';
import { useCluster } from './helpers.js';

const guardedLevels: STMIsolation[] = ['serializable-snapshot', 'serializable', 'repeatable-reads'];

describe('STM tx.getRange', () => {
  const etcd = useCluster();

  it("returns the keys under a prefix, sorted, with the attempt's own writes applied", async () => {
    const client = etcd().client();
    await client.put('gr/b').value('2').exec();
    await client.put('gr/a').value('1').exec();
    await client.put('gr0').value('outside').exec();
    await client.put('gr').value('outside too').exec();
    for (const isolation of [...guardedLevels, 'read-committed'] as STMIsolation[]) {
      const seen = await runSTM(
        client,
        async (tx) => {
          const before = (await tx.getRange('gr/')).map((i) => `${i.key}=${i.value}`);
          tx.put('gr/c', '3');
          tx.delete('gr/a');
          const after = (await tx.getRange('gr/')).map((i) => `${i.key}=${i.value}`);
          expect(await tx.get('gr/b')).toBe('2'); // served from the range's read
          return { before, after };
        },
        { isolation },
      );
      expect(seen).toEqual({ before: ['gr/a=1', 'gr/b=2'], after: ['gr/b=2', 'gr/c=3'] });
      await client.put('gr/a').value('1').exec();
      await client.delete().key('gr/c').exec();
    }
  });

  for (const isolation of guardedLevels) {
    for (const kind of ['add', 'change', 'delete', 'outside'] as const) {
      const what = {
        add: 'added to the range before the commit conflicts',
        change: 'changed in the range before the commit conflicts',
        delete: 'deleted from the range before the commit conflicts',
        outside: 'written next to (not under) the prefix does not conflict',
      }[kind];
      it(`${isolation}: a key ${what}`, async () => {
        const client = etcd().client();
        const other = etcd().client();
        const prefix = `rc/${isolation}/${kind}/`;
        await client.put(`${prefix}a`).value('1').exec();
        await client.put(`${prefix}b`).value('2').exec();
        let attempts = 0;
        const sum = await runSTM(
          client,
          async (tx) => {
            attempts++;
            const items = await tx.getRange(prefix);
            if (tx.attempt === 1) {
              // Another client writes between our read and our commit.
              if (kind === 'add') await other.put(`${prefix}c`).value('4').exec();
              if (kind === 'change') await other.put(`${prefix}a`).value('10').exec();
              if (kind === 'delete') await other.delete().key(`${prefix}b`).exec();
              if (kind === 'outside') {
                await other.put(`rc/${isolation}/${kind}0`).value('9').exec();
                await other.put(`rc/${isolation}/${kind}`).value('9').exec();
              }
            }
            const total = items.reduce((s, i) => s + Number(i.value), 0);
            tx.put(`rc-sum/${isolation}/${kind}`, String(total)); // a write outside the range only
            return total;
          },
          { isolation },
        );
        expect(attempts).toBe(kind === 'outside' ? 1 : 2);
        const expected = { add: 7, change: 12, delete: 1, outside: 3 }[kind];
        expect(sum).toBe(expected);
        expect(await client.get(`rc-sum/${isolation}/${kind}`).string()).toBe(String(expected));
      });
    }

    it(`${isolation}: a range that keeps changing names <prefix>* in STMConflictError`, async () => {
      const client = etcd().client();
      const other = etcd().client();
      const prefix = `rn/${isolation}/`;
      let n = 0;
      const err = await runSTM(
        client,
        async (tx) => {
          await tx.getRange(prefix);
          await other.put(`${prefix}${n++}`).value('x').exec();
          tx.put(`rn-out/${isolation}`, 'y');
        },
        { isolation, retries: 1 },
      ).catch((e: unknown) => e);
      expect(isRecipeError(err, 'STM_CONFLICT')).toBe(true);
      if (isRecipeError(err, 'STM_CONFLICT')) expect(err.keys).toContain(`${prefix}*`);
    });
  }

  it('read-committed reads ranges without guarding them', async () => {
    const client = etcd().client();
    const other = etcd().client();
    let attempts = 0;
    await runSTM(
      client,
      async (tx) => {
        attempts++;
        await tx.getRange('rrc/');
        await other.put('rrc/new').value('1').exec();
        tx.put('rrc-out', 'x');
      },
      { isolation: 'read-committed' },
    );
    expect(attempts).toBe(1);
  });

  it('refuses a range larger than maxTxnOps allows with INVALID_ARGUMENT, before committing', async () => {
    const client = etcd().client();
    await client.kv.txn({
      compare: [],
      failure: [],
      success: Array.from({ length: 12 }, (_, i) => ({
        request_put: { key: Buffer.from(`big/${i}`), value: Buffer.from('1') },
      })),
    } as never);
    await expect(
      runSTM(
        client,
        async (tx) => {
          await tx.getRange('big/');
          tx.put('big-out', 'x');
        },
        { maxTxnOps: 10 },
      ),
    ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await client.get('big-out').string()).toBeNull();
  });

  describe('bank: concurrent transfers while accounts are opened and closed, total conserved', () => {
    for (const isolation of guardedLevels) {
      it(isolation, async () => {
        const clients = [etcd().client(), etcd().client(), etcd().client()];
        const prefix = `bank/${isolation}/acct/`;
        const initial = 8;
        await clients[0]!.kv.txn({
          compare: [],
          failure: [],
          success: Array.from({ length: initial }, (_, i) => ({
            request_put: { key: Buffer.from(`${prefix}${String(i).padStart(4, '0')}`), value: Buffer.from('100') },
          })),
        } as never);
        for (const k of [0, 1, 2]) await clients[0]!.put(`bank/${isolation}/reserve/${k}`).value('500').exec();
        const stats = { transfers: 0, opened: 0, closed: 0, gaveUp: 0 };
        const index = (key: string) => Number(key.slice(prefix.length));
        const tryRun = async (c: Etcd3, fn: Parameters<typeof runSTM<string>>[1]): Promise<string | undefined> => {
          try {
            return await runSTM(c, fn, { isolation, retries: 40 });
          } catch (err) {
            if (!isRecipeError(err, 'STM_CONFLICT')) throw err;
            stats.gaveUp++;
            return undefined;
          }
        };
        const pick = <T>(xs: T[]): T => xs[Math.floor(Math.random() * xs.length)]!;
        const transfers = (c: Etcd3) => async () => {
          for (let i = 0; i < 25; i++) {
            const r = await tryRun(c, async (tx) => {
              const accts = await tx.getRange(prefix);
              if (accts.length < 2) return 'skip';
              const from = pick(accts);
              const to = pick(accts.filter((a) => a.key !== from.key));
              const amount = Math.min(Number(from.value), 1 + Math.floor(Math.random() * 30));
              tx.put(from.key, String(Number(from.value) - amount));
              tx.put(to.key, String(Number(to.value) + amount));
              return 'moved';
            });
            if (r === 'moved') stats.transfers++;
          }
        };
        // Opens the next account number (max + 1) with money from the opener's own reserve, outside
        // the accounts: two openers racing write disjoint keys except the new account, which neither
        // read. Only the range guard sees that phantom (without it, one opening overwrites the other).
        const opener = (c: Etcd3, k: number) => async () => {
          const reserve = `bank/${isolation}/reserve/${k}`;
          for (let i = 0; i < 12; i++) {
            const r = await tryRun(c, async (tx) => {
              const [accts, funds] = await Promise.all([tx.getRange(prefix), tx.get(reserve)]);
              const next = Math.max(-1, ...accts.map((a) => index(a.key))) + 1;
              const amount = Math.min(Number(funds), 10 + Math.floor(Math.random() * 20));
              tx.put(reserve, String(Number(funds) - amount));
              tx.put(`${prefix}${String(next).padStart(4, '0')}`, String(amount));
              return 'opened';
            });
            if (r === 'opened') stats.opened++;
          }
        };
        // Closes a random account, moving its balance into another one.
        const closer = (c: Etcd3) => async () => {
          for (let i = 0; i < 12; i++) {
            const r = await tryRun(c, async (tx) => {
              const accts = await tx.getRange(prefix);
              if (accts.length <= 3) return 'skip';
              const gone = pick(accts);
              const heir = pick(accts.filter((a) => a.key !== gone.key));
              tx.put(heir.key, String(Number(heir.value) + Number(gone.value)));
              tx.delete(gone.key);
              return 'closed';
            });
            if (r === 'closed') stats.closed++;
          }
        };
        await Promise.all(
          [
            transfers(clients[0]!)(),
            transfers(clients[1]!)(),
            transfers(clients[2]!)(),
            opener(clients[0]!, 0)(),
            opener(clients[1]!, 1)(),
            opener(clients[2]!, 2)(),
            closer(clients[1]!)(),
            closer(clients[2]!)(),
          ].map((p) => p),
        );
        const final = await clients[0]!.getAll().prefix(prefix).strings();
        const reserves = await clients[0]!.getAll().prefix(`bank/${isolation}/reserve/`).strings();
        const total = [...Object.values(final), ...Object.values(reserves)].reduce((s, v) => s + Number(v), 0);
        console.log(
          `stm bank ${isolation}: ${JSON.stringify(stats)}, ${Object.keys(final).length} accounts, total ${total}`,
        );
        expect(total).toBe(initial * 100 + 3 * 500);
        expect(stats.opened).toBeGreaterThan(0);
        expect(stats.closed).toBeGreaterThan(0);
        expect(stats.transfers).toBeGreaterThan(0);
      }, 120_000);
    }
  });
});
