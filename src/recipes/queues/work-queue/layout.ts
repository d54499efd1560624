import { childPrefix } from '../../../core/keys.js';

/** What a won claim hands to the WorkQueue. */
export interface Claimed {
  id: string;
  value: Buffer;
  attempts: number;
  token: bigint;
}

/** A job ID: `<%05d priority>-<digits>`. */
export const ID = /^[0-9]{5}-[0-9]+$/;

/** The keys of one work queue (docs/work-queue.md, "Keys in etcd"). */
export class Layout {
  readonly root: Buffer;
  readonly jobs: Buffer;
  readonly claims: Buffer;
  readonly attempts: Buffer;
  readonly waiters: Buffer;
  readonly dead: Buffer;
  readonly receipts: Buffer;

  constructor(prefix: string | Buffer) {
    this.root = childPrefix(prefix);
    const sub = (s: string) => Buffer.concat([this.root, Buffer.from(s)]);
    this.jobs = sub('jobs/');
    this.claims = sub('claims/');
    this.attempts = sub('attempts/');
    this.waiters = sub('waiters/');
    this.dead = sub('dead/');
    this.receipts = sub('receipts/');
  }

  job(id: string): Buffer {
    return Buffer.concat([this.jobs, Buffer.from(id)]);
  }
  claim(id: string): Buffer {
    return Buffer.concat([this.claims, Buffer.from(id)]);
  }
  attempt(id: string): Buffer {
    return Buffer.concat([this.attempts, Buffer.from(id)]);
  }
  deadKey(id: string): Buffer {
    return Buffer.concat([this.dead, Buffer.from(id)]);
  }

  /** The ID in a key under `under`, or undefined. */
  idIn(under: Buffer, key: Buffer): string | undefined {
    if (key.length <= under.length || !key.subarray(0, under.length).equals(under)) return undefined;
    return key.subarray(under.length).toString();
  }
}
