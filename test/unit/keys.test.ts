import { describe, expect, it } from 'vitest';
import {
  childPrefix,
  leaseHex,
  prefixEnd,
  sessionKey,
  showKey,
  toBuffer,
  uniqueKey,
  uniqueSuffix,
  uniqueToken,
} from '../../src/core/keys.js';

describe('key encoding (no etcd)', () => {
  it('names a session key like Go: <name>/<lease in lowercase hex>', () => {
    // Go's %x: lowercase, no padding, no 0x.
    expect(leaseHex(0x694d8f3381d1cf13n.toString())).toBe('694d8f3381d1cf13');
    expect(leaseHex('255')).toBe('ff');
    expect(sessionKey('locks/report', 0x694d8f3381d1cf13n.toString()).toString()).toBe('locks/report/694d8f3381d1cf13');
    expect(childPrefix('q').toString()).toBe('q/');
  });

  it('computes the end of a prefix range as etcd does', () => {
    expect(prefixEnd(Buffer.from('a/')).toString()).toBe('a0');
    expect(prefixEnd(Buffer.from([0x61, 0xff]))).toEqual(Buffer.from([0x62]));
    // All 0xff: "every key from here on" is etcd's "\0".
    expect(prefixEnd(Buffer.from([0xff, 0xff]))).toEqual(Buffer.from([0]));
  });

  it('makes unique, growing, 19-digit suffixes (Go newUniqueKV layout)', () => {
    const a = Array.from({ length: 1000 }, () => uniqueSuffix());
    for (const s of a) expect(s).toMatch(/^\d{19}$/);
    for (let i = 1; i < a.length; i++) expect(BigInt(a[i]!) > BigInt(a[i - 1]!)).toBe(true);
    expect(uniqueKey(Buffer.from('d/')).toString()).toMatch(/^d\/\d{19}$/);
  });

  it('makes tokens no other call makes: a random prefix per process, then a count', () => {
    const a = Array.from({ length: 1000 }, () => uniqueToken());
    expect(new Set(a).size).toBe(1000);
    const prefix = a[0]!.slice(0, a[0]!.indexOf('.'));
    expect(prefix).toHaveLength(12); // 9 random bytes
    for (const t of a) expect(t.startsWith(`${prefix}.`)).toBe(true);
  });

  it('shows binary keys as hex and text keys as text', () => {
    expect(showKey(Buffer.from('x/y'))).toBe('x/y');
    expect(showKey(Buffer.from([0xff, 0x00]))).toBe('0xff00');
    expect(toBuffer('é')).toEqual(Buffer.from('é', 'utf8'));
  });
});
