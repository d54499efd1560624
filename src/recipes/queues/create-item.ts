import type { ResolvedGuard } from '../../core/guard.js';
import { InternalError } from '../../core/errors.js';
import { cmp, op } from '../../core/kv.js';
import type { ReceiptBook } from '../../core/receipts.js';

/**
 * Creates `makeKey()` with `value` if absent (Go's `putNewKV`), retrying
 * with a new name on a collision, as one proven write (core/receipts.ts): a
 * lost reply is settled by the write's receipt, never by looking at the item,
 * which a consumer may already have taken. With a guard, the item is created
 * only while the guard holds; otherwise nothing is written and the guard's
 * error is thrown.
 * @returns the item's key
 */
export async function createItem(
  book: ReceiptBook,
  makeKey: () => Buffer,
  value: Buffer,
  guard: ResolvedGuard,
  what: string,
  signal: AbortSignal | undefined,
): Promise<Buffer> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const key = makeKey();
    const out = await book.write(
      {
        compares: [cmp.create(key, '==', 0n), ...guard.compares],
        success: [op.put(key, value)],
        failure: [op.range(key, { keysOnly: true }), ...guard.reads],
      },
      { signal, what },
    );
    if (out.landed) return key;
    const [taken, ...reads] = out.failure;
    if (taken?.type === 'range' && taken.kvs.length) continue; // the same name from another writer
    if (!guard.holds(reads)) throw guard.error(what);
  }
  throw new InternalError(`${what}: could not create a unique key`);
}
