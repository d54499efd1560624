/*
 * Key encoding: the one place that turns names into etcd keys.
 */

import { randomBytes } from 'node:crypto';
import { processWide } from './shared.js';

/** Encodes a string (UTF-8) or passes a Buffer through. */
export function toBuffer(key: string | Buffer): Buffer {
  return typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
}

/**
 * The end of the key range holding every key that starts with `prefix`
 * (etcd's `range_end`): the prefix with its last byte below 0xff incremented
 * and the rest dropped. All-0xff (or empty) prefixes mean "to the end of the
 * keyspace", which etcd spells as a single zero byte.
 */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/**
 * A lease ID as Go's `fmt.Sprintf("%x", leaseID)` prints it: lowercase hex,
 * no `0x`, no padding. etcd3 hands lease IDs around as decimal strings, which
 * can exceed 2^53, so this goes through BigInt, never Number.
 */
export function leaseHex(leaseId: string): string {
  return BigInt(leaseId).toString(16);
}

/**
 * The key a session owns under `name` in Go's concurrency layout
 * (`<name>/<lease hex>`), shared by Mutex and Election. The separator is
 * exactly one `/` appended to the name, never normalised: Go's
 * `NewMutex(s, "a/")` writes `a//<hex>` and so must we to share its queue.
 */
export function sessionKey(name: string | Buffer, leaseId: string): Buffer {
  return joinKey(name, `/${leaseHex(leaseId)}`);
}

/** `name` with one `/` appended: the prefix under which a recipe's keys live. */
export function childPrefix(name: string | Buffer): Buffer {
  return joinKey(name, '/');
}

/** The key made of `parts` end to end, strings as UTF-8: `joinKey(name, '/ready')`. */
export function joinKey(...parts: (string | Buffer)[]): Buffer {
  return Buffer.concat(parts.map(toBuffer));
}

/** Renders a key for messages and logs (UTF-8 where it decodes cleanly). */
export function showKey(key: Buffer | string): string {
  if (typeof key === 'string') return key;
  const s = key.toString('utf8');
  return Buffer.from(s, 'utf8').equals(key) ? s : `0x${key.toString('hex')}`;
}

/**
 * A unique, roughly time-ordered key suffix, for recipes that (like Go's
 * `newUniqueKV`) need one key per call: nanoseconds since the epoch as 19
 * decimal digits. Order in every recipe comes from revisions; the name only
 * has to be unique, and a create-if-absent Txn retries on the rare collision.
 */
export function uniqueSuffix(): string {
  const now = BigInt(Date.now()) * 1_000_000n;
  const sub = process.hrtime.bigint() % 1_000_000n;
  clock ??= processWide('unique-clock.v1', () => ({ last: 0n }));
  const last = clock;
  let n = now + sub;
  if (n <= last.last) n = last.last + 1n;
  last.last = n;
  return n.toString();
}
// Shared by every copy of the library in the process, so that two copies never make the same suffix.
let clock: { last: bigint } | undefined;

/**
 * A token no other call makes, in this process or another: a random prefix
 * drawn once per process, then a count. (Random bytes per call cost a
 * WorkQueue consumer 1–2 % of its CPU, in the claim's hot path.)
 */
export function uniqueToken(): string {
  tokens ??= processWide('unique-token.v1', () => ({ prefix: randomBytes(9).toString('base64url'), next: 0 }));
  return `${tokens.prefix}.${(tokens.next++).toString(36)}`;
}
let tokens: { prefix: string; next: number } | undefined;

/** A fresh `<dir><19-digit ns>` key (Go's `newUniqueKV` layout; `dir` ends with `/`). */
export function uniqueKey(dir: Buffer): Buffer {
  return joinKey(dir, uniqueSuffix());
}
