import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GRPCDeadlineExceededError, GRPCUnavailableError, EtcdPermissionDeniedError } from 'etcd3';
import {
  ClosedError,
  InternalError,
  InvalidArgumentError,
  isRecipeError,
  OutcomeUnknownError,
  PermissionDeniedError,
  RECIPE_ERROR_CODES,
  RecipeError,
  ServiceIdTakenError,
} from '../../src/core/errors.js';
import {
  classifyEtcdError,
  isClientClosed,
  isCompacted,
  isConnectionFault,
  isFutureRevision,
  isLeaseNotFound,
  isRefusedTxn,
  mayHaveLostLeader,
} from '../../src/core/etcd-errors.js';
import { isTransient } from '../../src/core/etcd-errors.js';

describe('error vocabulary (no etcd)', () => {
  it('declares each code once, and isRecipeError knows exactly those', () => {
    expect(new Set(RECIPE_ERROR_CODES).size).toBe(RECIPE_ERROR_CODES.length);
    for (const code of RECIPE_ERROR_CODES) expect(isRecipeError(new RecipeError(code, 'x'), code)).toBe(true);
    const fake = Object.assign(new Error('x'), { code: 'ECONNRESET' });
    expect(isRecipeError(fake)).toBe(false);
    expect(new ServiceIdTakenError('k', '0').code).toBe('SERVICE_ID_TAKEN');
    expect(isRecipeError(new InternalError('x'), 'INTERNAL')).toBe(true);
    expect(new InvalidArgumentError('options.ttl', 'bad').message).toContain('options.ttl');
  });

  it("the README's Errors table lists exactly the declared codes, in order", () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const section = /\n## Errors\n([\s\S]*?)\n## /.exec(readme)?.[1] ?? '';
    const listed = [...section.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(listed).toEqual([...RECIPE_ERROR_CODES]);
  });

  it('classifies what to retry: connection faults yes; refusals, aborts and our own errors no', () => {
    expect(isTransient(new GRPCUnavailableError('14 UNAVAILABLE: No connection established'))).toBe(true);
    expect(isTransient(new GRPCDeadlineExceededError('4 DEADLINE_EXCEEDED: Deadline exceeded'))).toBe(true);
    expect(isTransient(Object.assign(new Error('member x is avoided'), { name: 'MemberAvoidedError' }))).toBe(true);
    expect(isTransient(new ClosedError())).toBe(false);
    expect(isTransient(new OutcomeUnknownError('maybe'))).toBe(false);
    expect(isTransient(new EtcdPermissionDeniedError('etcdserver: permission denied'))).toBe(false);
    expect(isTransient(new DOMException('aborted', 'AbortError'))).toBe(false);
    expect(isTransient(new DOMException('timed out', 'TimeoutError'))).toBe(false);
    expect(isTransient('not an error')).toBe(false);
  });

  it("reads etcd's messages in one place: lease gone, compacted, client closed, leader and connection faults", () => {
    expect(isLeaseNotFound(new Error('etcdserver: requested lease not found'))).toBe(true);
    expect(isLeaseNotFound(new Error('etcdserver: key not found'))).toBe(false);
    expect(isCompacted(new Error('etcdserver: mvcc: required revision has been compacted'))).toBe(true);
    expect(isClientClosed(new ClosedError())).toBe(true);
    expect(isClientClosed(new Error('the client was already closed'))).toBe(true);
    expect(mayHaveLostLeader(new Error('etcdserver: leader changed'))).toBe(true);
    expect(mayHaveLostLeader(new Error('14 UNAVAILABLE: No connection established'))).toBe(false);
    expect(isConnectionFault(new Error('14 UNAVAILABLE: No connection established'))).toBe(true);
    expect(isConnectionFault(new Error('etcdserver: mvcc: required revision has been compacted'))).toBe(false);
    expect(isLeaseNotFound('not an error')).toBe(false);
  });

  it("turns etcd's permission refusal into PERMISSION_DENIED naming the key", () => {
    const err = classifyEtcdError(new EtcdPermissionDeniedError('etcdserver: permission denied'), 'locks/x');
    expect(err).toBeInstanceOf(PermissionDeniedError);
    expect((err as PermissionDeniedError).key).toBe('locks/x');
    const other = new Error('something else');
    expect(classifyEtcdError(other, 'k')).toBe(other);
  });

  it("recognises etcd's refusals by their messages: compacted, future revision, a Txn refused whole", () => {
    const etcd = (m: string) => new Error(`etcdserver: ${m}`);
    expect(isCompacted(etcd('mvcc: required revision has been compacted'))).toBe(true);
    expect(isFutureRevision(etcd('mvcc: required revision is a future revision'))).toBe(true);
    expect(isFutureRevision(etcd('mvcc: required revision has been compacted'))).toBe(false);
    expect(isRefusedTxn(etcd('too many operations in txn request'))).toBe(true);
    expect(isRefusedTxn(etcd('duplicate key given in txn request'))).toBe(true);
    expect(isRefusedTxn(new EtcdPermissionDeniedError('etcdserver: permission denied'))).toBe(true);
    expect(isRefusedTxn(new GRPCUnavailableError('connection reset'))).toBe(false);
    expect(isCompacted('compacted')).toBe(false); // not an Error
  });
});
