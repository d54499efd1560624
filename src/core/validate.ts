import { checkTransport } from './client.js';
import { InvalidArgumentError } from './errors.js';
import type { Namespace } from 'etcd3';

/*
 * Argument checks shared by every recipe. Each one throws an
 * InvalidArgumentError naming the argument and the accepted range, and is
 * called before a recipe writes anything to etcd.
 */

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (Buffer.isBuffer(value)) return `a Buffer of ${value.length} bytes`;
  if (typeof value === 'string') return value.length > 40 ? `a string of ${value.length} chars` : JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean')
    return `${typeof value} ${String(value)}`;
  return typeof value;
}

/** A key, name or prefix: a non-empty string or Buffer. */
export function checkName(value: unknown, argument: string): asserts value is string | Buffer {
  if ((typeof value === 'string' || Buffer.isBuffer(value)) && value.length > 0) return;
  const got = Buffer.isBuffer(value) ? 'an empty Buffer' : describe(value);
  throw new InvalidArgumentError(argument, `must be a non-empty string or Buffer, got ${got}`);
}

/** A value to store: a string or Buffer (may be empty). */
export function checkValue(value: unknown, argument: string): asserts value is string | Buffer {
  if (typeof value === 'string' || Buffer.isBuffer(value)) return;
  throw new InvalidArgumentError(argument, `must be a string or Buffer, got ${describe(value)}`);
}

/** An integer in [min, max] (no upper bound by default). */
export function checkInteger(value: unknown, argument: string, min: number, max?: number): asserts value is number {
  checkRange(value, argument, min, max, true);
}

/** A finite number in [min, max] (fractions allowed; no upper bound by default). */
export function checkNumber(value: unknown, argument: string, min: number, max?: number): asserts value is number {
  checkRange(value, argument, min, max, false);
}

function checkRange(value: unknown, argument: string, min: number, max: number | undefined, integer: boolean): void {
  const isNumber = integer ? Number.isSafeInteger(value) : Number.isFinite(value);
  if (isNumber && (value as number) >= min && (max === undefined || (value as number) <= max)) return;
  const open = max === undefined;
  const range = integer
    ? open
      ? `an integer >= ${min}`
      : `an integer from ${min} to ${max}`
    : `a number from ${min}${open ? '' : ` to ${max}`}`;
  throw new InvalidArgumentError(argument, `must be ${range}, got ${describe(value)}`);
}

/** An optional AbortSignal. */
export function checkSignal(value: unknown, argument = 'options.signal'): asserts value is AbortSignal | undefined {
  if (value === undefined) return;
  if (value instanceof AbortSignal) return;
  // Duck-type for signals from another realm (vm contexts, polyfills).
  if (
    typeof value === 'object' &&
    value !== null &&
    'aborted' in value &&
    typeof (value as AbortSignal).addEventListener === 'function'
  )
    return;
  throw new InvalidArgumentError(argument, `must be an AbortSignal or undefined, got ${describe(value)}`);
}

/**
 * An optional options object: a plain object. A JavaScript caller who passes
 * an AbortSignal where the options go (`acquire(AbortSignal.timeout(1000))`)
 * is told so, rather than having the signal silently ignored.
 */
export function checkOptions(value: unknown, argument = 'options'): asserts value is object | undefined {
  if (value === undefined) return;
  if (value instanceof AbortSignal) {
    throw new InvalidArgumentError(argument, 'must be an options object, got an AbortSignal: pass it as { signal }');
  }
  const proto = typeof value === 'object' && value !== null ? (Object.getPrototypeOf(value) as unknown) : undefined;
  if (
    typeof value !== 'object' ||
    value === null ||
    Array.isArray(value) ||
    (proto !== Object.prototype && proto !== null && Object.getPrototypeOf(proto) !== null)
  ) {
    throw new InvalidArgumentError(argument, `must be a plain object or undefined, got ${describe(value)}`);
  }
}

/** An optional options object ({@link checkOptions}) whose `signal` is an optional AbortSignal. */
export function checkWaitOptions(value: unknown): asserts value is { signal?: AbortSignal } | undefined {
  checkOptions(value);
  checkSignal((value as { signal?: unknown } | undefined)?.signal);
}

/** An optional boolean. */
export function checkBoolean(value: unknown, argument: string): asserts value is boolean | undefined {
  if (value === undefined || typeof value === 'boolean') return;
  throw new InvalidArgumentError(argument, `must be a boolean or undefined, got ${describe(value)}`);
}

/** A function. */
export function checkFunction(value: unknown, argument: string): asserts value is (...args: never[]) => unknown {
  if (typeof value !== 'function')
    throw new InvalidArgumentError(argument, `must be a function, got ${describe(value)}`);
}

/** An etcd3 client (`Etcd3` or a `Namespace` of it). */
export function checkClient(value: unknown, argument = 'client'): asserts value is Namespace {
  const c = value as Partial<Namespace> | null;
  if (
    typeof c !== 'object' ||
    c === null ||
    typeof c.watch !== 'function' ||
    typeof c.kv !== 'object' ||
    typeof c.leaseClient !== 'object' ||
    !Buffer.isBuffer(c.prefix)
  ) {
    throw new InvalidArgumentError(
      argument,
      `must be an etcd3 client (new Etcd3(...) or client.namespace(...)), got ${describe(value)}`,
    );
  }
  checkTransport(c as Namespace);
}
