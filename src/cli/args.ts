import { parseArgs } from 'node:util';
import type { OptionSpec, OptionValues } from './command.js';
import { UsageError } from './exit-codes.js';

/*
 * Command-line parsing on Node's own util.parseArgs: the tool's grammar
 * (a command word, flags, positionals, and the child after `--`) needs
 * nothing more, and the package gains no dependency.
 */

/** The argv split at the first `--`: the tool's part, and the child's (undefined when there is no `--`). */
export function splitAtDashDash(argv: readonly string[]): { own: string[]; child: string[] | undefined } {
  const i = argv.indexOf('--');
  return i < 0 ? { own: [...argv], child: undefined } : { own: argv.slice(0, i), child: argv.slice(i + 1) };
}

/**
 * The index in `own` of the first positional (the command word), skipping
 * the flags in `options` and their values.
 */
export function findCommandWord(own: readonly string[], options: Readonly<Record<string, OptionSpec>>): number {
  for (let i = 0; i < own.length; i++) {
    const arg = own[i]!;
    if (!arg.startsWith('-') || arg === '-') return i;
    if (arg.includes('=')) continue;
    const spec = arg.startsWith('--')
      ? options[arg.slice(2)]
      : Object.values(options).find((o) => o.short === arg.slice(1));
    if (spec?.type === 'string') i++;
  }
  return -1;
}

/**
 * Parses flags and positionals strictly.
 * @throws UsageError with one line naming the flag
 */
export function parseOptions(
  args: readonly string[],
  options: Readonly<Record<string, OptionSpec>>,
): { values: OptionValues; positionals: string[] } {
  const config: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = {};
  for (const [name, o] of Object.entries(options)) {
    config[name] = { type: o.type, ...(o.short ? { short: o.short } : {}), ...(o.multiple ? { multiple: true } : {}) };
  }
  try {
    const { values, positionals } = parseArgs({
      args: [...args],
      options: config,
      allowPositionals: true,
      strict: true,
    });
    for (const [name, v] of Object.entries(values)) {
      // parseArgs keeps the last of repeated single-valued flags; a repeated flag is more likely a mistake.
      if (!options[name]?.multiple && args.filter((a) => a === `--${name}` || a.startsWith(`--${name}=`)).length > 1) {
        throw new UsageError(`--${name} given more than once`);
      }
      if (
        options[name]?.type === 'string' &&
        typeof v === 'string' &&
        v.startsWith('--') &&
        options[v.slice(2).split('=')[0]!]
      ) {
        throw new UsageError(`--${name} needs a value`);
      }
    }
    return { values: values as OptionValues, positionals };
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const message = (err as Error).message;
    const flag = /'(-[^' ]+)/.exec(message)?.[1];
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new UsageError(`unknown option ${flag ?? message}`);
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      throw new UsageError(
        /argument missing/.test(message)
          ? `${flag ?? 'an option'} needs a value`
          : `${flag ?? 'an option'} takes no value`,
      );
    }
    throw new UsageError(message);
  }
}

/** A string flag's value, or undefined. */
export function stringOption(values: OptionValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

/** A repeatable string flag's values (empty when absent). */
export function stringsOption(values: OptionValues, name: string): string[] {
  const v = values[name];
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : typeof v === 'string' ? [v] : [];
}

/** True when a boolean flag was given. */
export function flagOption(values: OptionValues, name: string): boolean {
  return values[name] === true;
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * A duration: a number of seconds (`10`, `1.5`) or a number with a unit
 * (`500ms`, `2s`, `1m`, `1h`, and Go's combinations like `1m30s`).
 * @returns milliseconds
 * @throws UsageError naming `what`
 */
export function parseDuration(text: string, what: string, range: { min?: number; max?: number } = {}): number {
  const { min = 0, max = 2 ** 31 - 1 } = range;
  let ms: number | undefined;
  if (/^[0-9]+(\.[0-9]+)?$/.test(text)) ms = Number(text) * 1000;
  else if (/^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$/.test(text)) {
    ms = 0;
    for (const m of text.matchAll(/([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)/g)) ms += Number(m[1]) * UNIT_MS[m[2]!]!;
  }
  if (ms === undefined || !Number.isFinite(ms))
    throw new UsageError(`${what}: ${JSON.stringify(text)} is not a duration (seconds, or e.g. 500ms, 2s, 1m)`);
  ms = Math.round(ms);
  if (ms < min || ms > max)
    throw new UsageError(`${what}: ${text} is out of range (${formatDuration(min)} to ${formatDuration(max)})`);
  return ms;
}

/** A duration flag in ms, or `fallback` when absent. */
export function durationOption(
  values: OptionValues,
  name: string,
  fallback: number,
  range?: { min?: number; max?: number },
): number;
export function durationOption(
  values: OptionValues,
  name: string,
  fallback?: undefined,
  range?: { min?: number; max?: number },
): number | undefined;
export function durationOption(
  values: OptionValues,
  name: string,
  fallback?: number,
  range?: { min?: number; max?: number },
): number | undefined {
  const v = stringOption(values, name);
  return v === undefined ? fallback : parseDuration(v, `--${name}`, range);
}

/** An integer flag within [min, max], or `fallback` when absent. */
export function integerOption(values: OptionValues, name: string, min: number, max: number, fallback: number): number;
export function integerOption(
  values: OptionValues,
  name: string,
  min: number,
  max: number,
  fallback?: undefined,
): number | undefined;
export function integerOption(
  values: OptionValues,
  name: string,
  min: number,
  max: number,
  fallback?: number,
): number | undefined {
  const v = stringOption(values, name);
  if (v === undefined) return fallback;
  if (!/^-?[0-9]+$/.test(v) || Number(v) < min || Number(v) > max)
    throw new UsageError(`--${name}: must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return Number(v);
}

/** A short human form of a duration in ms: `2s`, `500ms`, `1.5s`. */
export function formatDuration(ms: number): string {
  return ms < 1000 ? `${ms}ms` : `${ms / 1000}s`;
}

/** Whole seconds for a TTL flag (etcd leases are in seconds), at least 1. */
export function ttlOption(values: OptionValues, fallbackSeconds: number): number {
  const ms = durationOption(values, 'ttl', fallbackSeconds * 1000, { min: 1000, max: 9_000_000_000_000 });
  return Math.ceil(ms / 1000);
}

/** Throws a UsageError unless exactly `names.length` positionals were given (named in the message). */
export function expectArgs(
  args: readonly string[],
  names: readonly string[],
  extra: 'none' | 'allowed' = 'none',
): void {
  if (args.length < names.length) throw new UsageError(`missing ${names.slice(args.length).join(' ')}`);
  if (extra === 'none' && args.length > names.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(args[names.length])}`);
  for (const [i, n] of names.entries()) if (args[i] === '') throw new UsageError(`${n} must not be empty`);
}
