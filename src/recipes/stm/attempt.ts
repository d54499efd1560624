import { InvalidArgumentError } from '../../core/errors.js';
import { showKey, toBuffer } from '../../core/keys.js';
import type { KeyValue } from '../../core/kv.js';
import { checkName, checkValue } from '../../core/validate.js';
import { idOf, type STMConfig } from './config.js';
import { opsNeeded } from './isolation.js';
import { type Prefetched, ReadSet } from './reads.js';
import type { STMIsolation, STMRangeItem, STMTransaction } from './types.js';

/** One key of the write set: a put (value) or a delete (undefined). */
export interface Write {
  readonly key: Buffer;
  readonly value: Buffer | undefined;
}

const startsWith = (key: Buffer, prefix: Buffer): boolean =>
  key.length >= prefix.length && key.subarray(0, prefix.length).equals(prefix);

/** One run of `fn`: the `tx` it receives, with its read set and write set. */
export class Attempt implements STMTransaction {
  readonly isolation: STMIsolation;
  readonly reads: ReadSet;
  /** By key id, in the order of each key's last write. */
  readonly writes = new Map<string, Write>();
  #closed = false;

  constructor(
    private readonly config: STMConfig,
    readonly attempt: number,
    prefetched: Prefetched | undefined,
  ) {
    this.isolation = config.isolation;
    this.reads = new ReadSet(config, prefetched, (reads, ranges) => this.checkSize(reads, 0, ranges));
  }

  async get(key: string | Buffer): Promise<string | undefined> {
    return (await this.#value(key, 'get'))?.toString('utf8');
  }

  getBuffer(key: string | Buffer): Promise<Buffer | undefined> {
    return this.#value(key, 'getBuffer');
  }

  async getJSON<J = unknown>(key: string | Buffer): Promise<J | undefined> {
    const value = await this.#value(key, 'getJSON');
    if (value === undefined) return undefined;
    try {
      return JSON.parse(value.toString('utf8')) as J;
    } catch (err) {
      throw new SyntaxError(`STM: the value of ${showKey(toBuffer(key))} is not valid JSON: ${(err as Error).message}`);
    }
  }

  async rev(key: string | Buffer): Promise<bigint> {
    this.#open('rev', key);
    const { kv } = await this.reads.key(toBuffer(key));
    return kv ? kv.modRevision : 0n;
  }

  async getRange(prefix: string | Buffer): Promise<STMRangeItem[]> {
    this.#open('getRange', prefix, 'prefix');
    const p = toBuffer(prefix);
    const range = await this.reads.range(p);
    // What this attempt relies on: the read set's values (the same data under the snapshot levels), then
    // its own writes on top.
    const byKey = new Map<string, Buffer>();
    for (const kv of range.kvs) {
      const read = this.reads.keys.get(idOf(kv.key))?.read;
      const seen: KeyValue | null = read ? read.kv : kv;
      if (seen) byKey.set(idOf(kv.key), seen.value);
    }
    for (const [id, w] of this.writes) {
      if (!startsWith(w.key, p)) continue;
      if (w.value === undefined) byKey.delete(id);
      else byKey.set(id, w.value);
    }
    return [...byKey]
      .map(([id, value]) => ({ keyBuffer: Buffer.from(id, 'latin1'), buffer: Buffer.from(value) }))
      .sort((a, b) => Buffer.compare(a.keyBuffer, b.keyBuffer))
      .map(({ keyBuffer, buffer }) => ({
        key: keyBuffer.toString('utf8'),
        value: buffer.toString('utf8'),
        keyBuffer,
        buffer,
      }));
  }

  put(key: string | Buffer, value: string | Buffer): void {
    this.#open('put', key);
    checkValue(value, 'value');
    this.#write(toBuffer(key), Buffer.from(toBuffer(value)));
  }

  putJSON(key: string | Buffer, value: unknown): void {
    this.#open('putJSON', key);
    let text: string | undefined;
    try {
      text = JSON.stringify(value);
    } catch (err) {
      throw new InvalidArgumentError('value', `must be JSON-serialisable: ${(err as Error).message}`);
    }
    if (text === undefined) throw new InvalidArgumentError('value', `must be JSON-serialisable, got ${typeof value}`);
    this.#write(toBuffer(key), Buffer.from(text, 'utf8'));
  }

  delete(key: string | Buffer): void {
    this.#open('delete', key);
    this.#write(toBuffer(key), undefined);
  }

  /** No more calls from fn are accepted. */
  close(): void {
    this.#closed = true;
  }

  /**
   * Throws if the commit would need more than maxTxnOps operations in one Txn
   * branch after adding `reads` keys and `ranges` ranges to the read set and
   * `writes` keys to the write set.
   */
  checkSize(reads: number, writes: number, ranges = 0): void {
    const { policy, maxTxnOps, isolation } = this.config;
    const R = this.reads.keys.size + reads;
    const W = this.writes.size + writes;
    const G = this.reads.ranges.size + ranges;
    const needed = opsNeeded(policy, R, G, W);
    if (needed > maxTxnOps) {
      throw new InvalidArgumentError(
        'fn',
        `this transaction would need ${needed} operations in one etcd Txn (${R} keys read` +
          `${G ? ` (${G} range(s))` : ''}, ${W} written, isolation '${isolation}'), more than maxTxnOps = ` +
          `${maxTxnOps} (etcd's --max-txn-ops, default 128); split it into smaller transactions, or raise both limits`,
      );
    }
  }

  /** Refuses calls after the attempt ended, and bad keys. */
  #open(method: string, key: unknown, argument = 'key'): asserts key is string | Buffer {
    if (this.#closed) {
      throw new InvalidArgumentError(
        'tx',
        `STM: tx.${method}() called after this attempt ended (tx kept past fn, or called from code fn did not await)`,
      );
    }
    checkName(key, argument);
  }

  #write(key: Buffer, value: Buffer | undefined): void {
    const id = idOf(key);
    if (!this.writes.has(id)) this.checkSize(0, 1);
    this.writes.delete(id); // keep the last write's position
    this.writes.set(id, { key, value });
  }

  async #value(key: string | Buffer, method: string): Promise<Buffer | undefined> {
    this.#open(method, key);
    const k = toBuffer(key);
    const written = this.writes.get(idOf(k));
    if (written) return written.value && Buffer.from(written.value); // read-your-writes
    return (await this.reads.key(k)).kv?.value;
  }
}
