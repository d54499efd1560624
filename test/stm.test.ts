import { describe, expect, it } from 'vitest';
import { isRecipeError, runSTM, type STMIsolation, type STMTransaction } from '../src/index.js';
import { keysUnder, useCluster } from './helpers.js';
import { balances, gate, isConflict, kvRequests, openAccounts, randomPair, transfer } from './stm-helpers.js';

const serializableLevels: STMIsolation[] = ['serializable-snapshot', 'serializable', 'repeatable-reads'];
const allLevels: STMIsolation[] = [...serializableLevels, 'read-committed'];

describe('runSTM', () => {
  const etcd = useCluster();
  const storeRevision = async () =>
    BigInt(
      (
        await etcd()
          .client()
          .kv.range({ key: Buffer.from('\0') })
      ).header.revision,
    );

  it('reads absent keys as undefined, reads its own writes, and commits them together', async () => {
    const client = etcd().client();
    await client.put('basic/present').value('hello');
    await client.put('basic/empty').value('');
    await client.put('basic/gone').value('x');
    const seen = await runSTM(client, async (tx) => {
      const before = {
        absent: await tx.get('basic/absent'),
        absentJSON: await tx.getJSON('basic/absent'),
        absentRev: await tx.rev('basic/absent'),
        empty: await tx.get('basic/empty'), // empty and absent are different things here (not in Go)
        present: await tx.get('basic/present'),
        presentBuffer: await tx.getBuffer('basic/present'),
      };
      tx.put('basic/absent', 'now here');
      tx.putJSON('basic/json', { n: 1, list: ['a'] });
      tx.delete('basic/gone');
      tx.delete('basic/never'); // delete of an absent key: a no-op at commit
      const after = {
        absent: await tx.get('basic/absent'),
        json: await tx.getJSON<{ n: number; list: string[] }>('basic/json'),
        gone: await tx.get('basic/gone'),
      };
      return { before, after };
    });
    expect(seen.before).toEqual({
      absent: undefined,
      absentJSON: undefined,
      absentRev: 0n,
      empty: '',
      present: 'hello',
      presentBuffer: Buffer.from('hello'),
    });
    expect(seen.after).toEqual({ absent: 'now here', json: { n: 1, list: ['a'] }, gone: undefined });
    expect(await client.getAll().prefix('basic/').strings()).toEqual({
      'basic/absent': 'now here',
      'basic/empty': '',
      'basic/json': '{"n":1,"list":["a"]}',
      'basic/present': 'hello',
    });
    // All writes landed in one revision.
    const kvs = (await client.getAll().prefix('basic/').exec()).kvs;
    const mods = new Set(
      kvs.filter((kv) => ['basic/absent', 'basic/json'].includes(kv.key.toString())).map((kv) => kv.mod_revision),
    );
    expect(mods.size).toBe(1);
  });

  it('works inside a namespace and with binary keys', async () => {
    const root = etcd().client();
    const ns = root.namespace('ns-stm/');
    const binary = Buffer.from([0x00, 0xff, 0x10]);
    await runSTM(ns, async (tx) => {
      tx.put('a', String(Number((await tx.get('a')) ?? '0') + 1));
      tx.put(binary, Buffer.from([1, 2, 3]));
    });
    expect(await root.get('ns-stm/a').string()).toBe('1');
    expect(await runSTM(ns, (tx) => tx.getBuffer(binary))).toEqual(Buffer.from([1, 2, 3]));
  });

  it.each(serializableLevels)(
    'conserves the total of a 100-account bank under concurrent transfers (%s)',
    async (isolation) => {
      const prefix = `bank-${isolation}/`;
      const admin = etcd().client();
      const accounts = await openAccounts(admin, prefix, 100, 100);
      const workers = 6;
      const transfersEach = 40;
      let moved = 0;
      let conflicts = 0;
      await Promise.all(
        Array.from({ length: workers }, async () => {
          const client = etcd().client(); // its own connection
          for (let i = 0; i < transfersEach; i++) {
            const [from, to] = randomPair(accounts.length);
            // Big amounts, so that overdrafts would happen if a check read stale data.
            const amount = 1 + Math.floor(Math.random() * 80);
            try {
              if (await transfer(client, accounts[from]!, accounts[to]!, amount, isolation)) moved++;
            } catch (err) {
              if (!isConflict(err)) throw err;
              conflicts++;
            }
          }
        }),
      );
      const after = await balances(admin, prefix);
      expect(after.size).toBe(100);
      expect([...after.values()].reduce((a, b) => a + b, 0)).toBe(100 * 100);
      for (const v of after.values()) expect(v).toBeGreaterThanOrEqual(0); // no overdraft: each check saw current data
      expect(moved).toBeGreaterThan((workers * transfersEach) / 2);
      expect(conflicts).toBeLessThan(5);
    },
  );

  it.each(allLevels)('lost update: two interleaved increments under %s', async (isolation) => {
    const key = `lost-${isolation}/counter`;
    const client = etcd().client();
    const other = etcd().client();
    await client.put(key).value('0');
    const t1HasRead = gate();
    const t2Done = gate();
    const t1Runs: number[] = [];
    // T1 reads the counter, then (first attempt only) waits until T2 has committed its own increment.
    const t1 = runSTM(
      client,
      async (tx) => {
        const n = Number(await tx.get(key));
        t1Runs.push(n);
        if (tx.attempt === 1) {
          t1HasRead.open();
          await t2Done.wait;
        }
        tx.put(key, String(n + 1));
      },
      { isolation },
    );
    await t1HasRead.wait;
    await runSTM(
      other,
      async (tx) => {
        tx.put(key, String(Number(await tx.get(key)) + 1));
      },
      { isolation },
    );
    t2Done.open();
    await t1;
    const final = await client.get(key).string();
    if (isolation === 'read-committed') {
      // Both transactions committed, yet the counter went up once: T1 overwrote T2's update.
      expect(final).toBe('1');
      expect(t1Runs).toEqual([0]);
    } else {
      // T1's commit conflicted; its retry read T2's value.
      expect(final).toBe('2');
      expect(t1Runs).toEqual([0, 1]);
    }
  });

  it.each(['serializable-snapshot', 'serializable'] as const)(
    'blind writes are guarded only under serializable-snapshot (%s)',
    async (isolation) => {
      const p = `blind-${isolation}/`;
      const client = etcd().client();
      await client.put(`${p}a`).value('a');
      await client.put(`${p}c`).value('initial');
      const run = (retries: number) => {
        const hasRead = gate();
        const written = gate();
        let attempts = 0;
        const done = runSTM(
          client,
          async (tx: STMTransaction) => {
            attempts = tx.attempt;
            await tx.get(`${p}a`);
            if (tx.attempt === 1) {
              hasRead.open();
              await written.wait;
            }
            tx.put(`${p}c`, `blind-${tx.attempt}`); // never read: a blind write
          },
          { isolation, retries },
        );
        return { hasRead, written, done, attempts: () => attempts };
      };
      const t = run(10);
      await t.hasRead.wait;
      await client.put(`${p}c`).value('someone else, after our snapshot');
      t.written.open();
      await t.done;
      if (isolation === 'serializable-snapshot') {
        expect(t.attempts()).toBe(2); // MOD(c) < snapshot + 1 failed, so it ran again
        expect(await client.get(`${p}c`).string()).toBe('blind-2');
      } else {
        expect(t.attempts()).toBe(1); // only the read set is compared
        expect(await client.get(`${p}c`).string()).toBe('blind-1');
      }
      if (isolation === 'serializable-snapshot') {
        // Without retries the conflict surfaces, naming the blind-written key.
        const u = run(0);
        await u.hasRead.wait;
        await client.put(`${p}c`).value('again');
        u.written.open();
        const err = await u.done.catch((e: unknown) => e);
        expect(isRecipeError(err, 'STM_CONFLICT')).toBe(true);
        expect(err).toMatchObject({ keys: [`${p}c`], attempts: 1 });
        expect(await client.get(`${p}c`).string()).toBe('again');
      }
    },
  );

  it.each(['serializable-snapshot', 'repeatable-reads'] as const)(
    "reads are pinned to the first read's revision only in the serializable levels (%s)",
    async (isolation) => {
      const p = `pin-${isolation}/`;
      const client = etcd().client();
      await client.put(`${p}a`).value('a');
      await client.put(`${p}b`).value('old');
      const hasRead = gate();
      const written = gate();
      const seen: string[] = [];
      const done = runSTM(
        client,
        async (tx) => {
          const a = await tx.get(`${p}a`);
          if (tx.attempt === 1) {
            hasRead.open();
            await written.wait;
          }
          const b = await tx.get(`${p}b`); // issued after the external write below has committed
          seen.push(`${tx.attempt}:${b}`);
          tx.put(`${p}out`, `${a}+${b}`);
        },
        { isolation },
      );
      await hasRead.wait;
      await client.put(`${p}b`).value('new');
      written.open();
      await done;
      if (isolation === 'serializable-snapshot') {
        // Attempt 1 read b at its snapshot (before the write); the commit conflicted on b.
        expect(seen).toEqual(['1:old', '2:new']);
      } else {
        // Repeatable reads read the latest b; nothing changed after that, so it committed at once.
        expect(seen).toEqual(['1:new']);
      }
      expect(await client.get(`${p}out`).string()).toBe('a+new');
    },
  );

  it("after a conflict, the retry reads every key at the Else branch's revision, also ones unread before", async () => {
    const client = etcd().client();
    const meddler = etcd().client();
    await client.put('else/a').value('a1');
    await client.put('else/c').value('c1');
    const seen: string[] = [];
    await runSTM(client, async (tx) => {
      if (tx.attempt === 1) {
        const a = await tx.get('else/a');
        await meddler.put('else/a').value('a2'); // (test only) makes attempt 1 conflict
        tx.put('else/out', `${a}`);
        return;
      }
      if (tx.attempt === 2) await meddler.put('else/c').value('c2'); // after the failed commit, before our read
      const c = await tx.get('else/c'); // first read of this attempt, not in the prefetch
      const a = await tx.get('else/a'); // served from the prefetch
      seen.push(`${tx.attempt}:${a},${c}`);
      tx.put('else/out', `${a},${c}`);
    });
    // Attempt 2 saw one snapshot (c as of the failed commit), conflicted on c, and attempt 3 read afresh.
    expect(seen).toEqual(['2:a2,c1', '3:a2,c2']);
    expect(await client.get('else/out').string()).toBe('a2,c2');
  });

  it('a read-only transaction commits without writing; serializable-snapshot: 1 snapshot, no commit Txn', async () => {
    const client = etcd().client();
    const url = etcd().members[0]!.clientUrl;
    await client.put('ro/a').value('1');
    await client.put('ro/b').value('2');
    for (const isolation of allLevels) {
      const rev = await storeRevision();
      const before = await kvRequests(url);
      const values = await runSTM(client, (tx) => Promise.all([tx.get('ro/a'), tx.get('ro/b'), tx.get('ro/none')]), {
        isolation,
      });
      const after = await kvRequests(url);
      expect(values).toEqual(['1', '2', undefined]);
      expect(await storeRevision()).toBe(rev); // nothing written
      // Three reads issued together go out as one request; only repeatable-reads needs a commit Txn to validate them.
      expect(after.total - before.total).toBe(isolation === 'repeatable-reads' ? 2 : 1);
    }
    // A snapshot that moved under a read-only transaction still gives one consistent view.
    const hasRead = gate();
    const written = gate();
    const view = runSTM(client, async (tx) => {
      const a = await tx.get('ro/a');
      if (tx.attempt === 1) {
        hasRead.open();
        await written.wait;
      }
      return [a, await tx.get('ro/b'), tx.attempt];
    });
    await hasRead.wait;
    await client.put('ro/b').value('changed');
    written.open();
    expect(await view).toEqual(['1', '2', 1]);
  });

  it('a conflict at the retry limit rejects with STM_CONFLICT naming the keys; nothing is committed', async () => {
    const client = etcd().client();
    const meddler = etcd().client();
    await client.put('limit/x').value('0');
    let runs = 0;
    const err = await runSTM(
      client,
      async (tx) => {
        runs++;
        const x = Number(await tx.get('limit/x'));
        await meddler.put('limit/x').value(String(x + 100)); // (a test only: fn must not have side effects)
        tx.put('limit/x', String(x + 1));
        tx.put('limit/y', 'written by the STM');
      },
      { retries: 3, backoff: { initialMs: 1 } },
    ).catch((e: unknown) => e);
    expect(isRecipeError(err, 'STM_CONFLICT')).toBe(true);
    expect(err).toMatchObject({ code: 'STM_CONFLICT', keys: ['limit/x'], attempts: 4 });
    expect(runs).toBe(4);
    expect(await client.get('limit/y').string()).toBeNull();
    expect(await client.get('limit/x').string()).toBe('400');
  });

  it("on a conflict the next attempt is served from the commit's Else branch (no extra read), as in Go", async () => {
    const client = etcd().client();
    const url = etcd().members[0]!.clientUrl;
    await client.put('prefetch/a').value('1');
    await client.put('prefetch/b').value('1');
    let runs = 0;
    const before = await kvRequests(url);
    await runSTM(client, async (tx) => {
      runs++;
      const [a, b] = await Promise.all([tx.get('prefetch/a'), tx.get('prefetch/b')]);
      if (tx.attempt === 1) await etcd().client().put('prefetch/a').value('5');
      tx.put('prefetch/sum', String(Number(a) + Number(b)));
    });
    const after = await kvRequests(url);
    expect(runs).toBe(2);
    expect(await client.get('prefetch/sum').string()).toBe('6');
    // read (1) + meddling put (1) + failed commit (1) + commit (1): the retry read nothing.
    expect(after.total - before.total).toBe(4);

    // options.prefetch: read in the first round trip and guarded like any read.
    runs = 0;
    const before2 = await kvRequests(url);
    await runSTM(
      client,
      async (tx) => {
        runs++;
        // Served from the prefetch read (awaiting it makes sure that read is done before we meddle).
        const a = Number(await tx.get('prefetch/a'));
        // prefetched, read by fn only after the change
        if (tx.attempt === 1) await etcd().client().put('prefetch/b').value('7');
        tx.put('prefetch/sum', String(a + Number(await tx.get('prefetch/b'))));
      },
      { prefetch: ['prefetch/a', 'prefetch/b'] },
    );
    const after2 = await kvRequests(url);
    expect(runs).toBe(2);
    expect(await client.get('prefetch/sum').string()).toBe('12');
    // prefetch read (1) + meddling put (1) + failed commit (1) + commit (1).
    expect(after2.total - before2.total).toBe(4);
  });

  it('an error thrown by fn rejects with that error and commits nothing', async () => {
    const client = etcd().client();
    let runs = 0;
    const boom = new Error('insufficient funds');
    await expect(
      runSTM(client, async (tx) => {
        runs++;
        tx.put('throws/a', '1');
        await tx.get('throws/b');
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(runs).toBe(1);
    expect(await keysUnder(client, 'throws/')).toEqual([]);
    // A JSON value that does not parse fails the same way.
    await client.put('throws/bad-json').value('{nope');
    await expect(runSTM(client, (tx) => tx.getJSON('throws/bad-json'))).rejects.toThrow(
      /throws\/bad-json is not valid JSON/,
    );
  });

  it("aborts between retries and during reads, with the signal's reason, committing nothing", async () => {
    const client = etcd().client();
    const meddler = etcd().client();
    await client.put('abort/x').value('0');
    const url = etcd().members[0]!.clientUrl;
    const controller = new AbortController();
    const reason = new Error('caller gave up');
    let runs = 0;
    const txnsBefore = (await kvRequests(url)).txn;
    const pending = runSTM(
      client,
      async (tx) => {
        runs++;
        const x = Number(await tx.get('abort/x'));
        await meddler.put('abort/x').value(String(x + 1)); // every attempt conflicts (test only)
        tx.put('abort/y', 'never');
      },
      { retries: 100, backoff: { initialMs: 2e9, maxMs: 2e9 }, signal: controller.signal },
    );
    // Attempt 1 conflicts and retries at once; attempt 2 conflicts and then waits (for up to 3 weeks).
    // Wait for attempt 2's failed commit Txn (the two commits are the only Txns).
    for (let i = 0; (await kvRequests(url)).txn < txnsBefore + 2; i++) {
      if (i > 500) throw new Error('attempt 2 did not commit');
      await new Promise((r) => setTimeout(r, 20));
    }
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    expect(runs).toBe(2);
    expect(await client.get('abort/y').string()).toBeNull();

    // Aborted while a read is in flight.
    const c2 = new AbortController();
    const reading = runSTM(
      client,
      async (tx) => {
        const read = tx.get('abort/x');
        c2.abort(reason);
        await read;
        tx.put('abort/y', 'never');
      },
      { signal: c2.signal },
    );
    await expect(reading).rejects.toBe(reason);

    // Already aborted: fn never runs.
    let ran = false;
    await expect(
      runSTM(
        client,
        () => {
          ran = true;
        },
        { signal: AbortSignal.abort(reason) },
      ),
    ).rejects.toBe(reason);
    expect(ran).toBe(false);
    expect(await client.get('abort/y').string()).toBeNull();
  });

  it("rejects an oversized transaction clearly before sending it, accepts one at exactly etcd's limit", async () => {
    const client = etcd().client();
    const keys = Array.from({ length: 129 }, (_, i) => `big/${String(i).padStart(3, '0')}`);
    // 129 writes: one more than etcd's default --max-txn-ops.
    let err = await runSTM(client, (tx) => {
      for (const k of keys) tx.put(k, 'v');
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT', argument: 'fn' });
    expect((err as Error).message).toMatch(/129 operations.*maxTxnOps = 128/);
    expect(await keysUnder(client, 'big/')).toEqual([]);
    // serializable-snapshot compares every key read and every key written: 64 + 64 = 128 fits exactly...
    await openAccounts(client, 'big/', 65, 1);
    const half = keys.slice(0, 64);
    await runSTM(client, async (tx) => {
      const values = await Promise.all(half.map((k) => tx.get(k)));
      for (const [i, k] of half.entries()) tx.put(k, String(Number(values[i]) + 1));
    });
    expect(await client.get('big/000').string()).toBe('2');
    // ... and 65 + 64 is one too many: the 64th put is refused.
    err = await runSTM(client, async (tx) => {
      await Promise.all(keys.slice(0, 65).map((k) => tx.get(k)));
      for (const k of half) tx.put(k, '0');
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(await client.get('big/000').string()).toBe('2');
    // The limit is an option; read-committed does not count reads.
    err = await runSTM(
      client,
      (tx) => {
        tx.put('big/a', '1');
        tx.put('big/b', '1');
      },
      { maxTxnOps: 1 },
    ).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT' });
    const many = await runSTM(client, (tx) => Promise.all(keys.map((k) => tx.get(k))), { isolation: 'read-committed' });
    expect(many.filter((v) => v !== undefined)).toHaveLength(65);
    await expect(runSTM(client, async () => 1, { prefetch: keys })).rejects.toMatchObject({
      argument: 'options.prefetch',
    });
  });

  it('rejects bad input with INVALID_ARGUMENT before writing anything', async () => {
    const client = etcd().client();
    await client.put('bad/x').value('1');
    const before = await client.getAll().prefix('').strings();
    const bad = (p: Promise<unknown>) => expect(p).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const ok = async () => 1;
    await bad(Promise.resolve().then(() => runSTM({} as never, ok)));
    await bad(Promise.resolve().then(() => runSTM(client, 'fn' as never)));
    await bad(runSTM(client, ok, null as never));
    await bad(runSTM(client, ok, { isolation: 'snapshot' as never }));
    await bad(runSTM(client, ok, { retries: -1 }));
    await bad(runSTM(client, ok, { retries: 1.5 }));
    await bad(runSTM(client, ok, { maxTxnOps: 0 }));
    await bad(runSTM(client, ok, { prefetch: 'bad/x' as never }));
    await bad(runSTM(client, ok, { prefetch: ['bad/x', ''] }));
    await bad(runSTM(client, ok, { signal: 'soon' as never }));
    await bad(runSTM(client, ok, { backoff: { initialMs: -1 } }));
    await bad(runSTM(client, ok, { backoff: 5 as never }));
    // Bad calls on tx inside fn: rejected, and the attempt's other writes are not committed.
    const inside = (body: (tx: STMTransaction) => unknown) =>
      bad(
        runSTM(client, async (tx) => {
          tx.put('bad/written', 'no');
          await body(tx);
        }),
      );
    await inside((tx) => tx.put('', 'v'));
    await inside((tx) => tx.put('bad/k', 42 as never));
    await inside((tx) => tx.put(undefined as never, 'v'));
    await inside((tx) => tx.putJSON('bad/k', undefined));
    await inside((tx) => tx.putJSON('bad/k', { n: 1n }));
    await inside((tx) => tx.delete(Buffer.alloc(0)));
    await inside((tx) => tx.get(''));
    await inside((tx) => tx.getJSON(7 as never));
    expect(await client.getAll().prefix('').strings()).toEqual(before);
  });

  it('refuses tx calls after its attempt ended', async () => {
    const client = etcd().client();
    let leaked: STMTransaction | undefined;
    await runSTM(client, (tx) => {
      leaked = tx;
    });
    expect(() => leaked!.put('late/k', 'v')).toThrow(/after this attempt ended/);
    await expect(leaked!.get('late/k')).rejects.toThrow(/after this attempt ended/);
    expect(await keysUnder(client, 'late/')).toEqual([]);
  });
});
