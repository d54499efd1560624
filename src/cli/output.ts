/** The program's name, as messages and help show it. */
export const PROGRAM = 'etcd-recipes';

/** Writes one diagnostic line on `stream`: `etcd-recipes: <message>`. */
export function say(stream: NodeJS.WritableStream, message: string): void {
  stream.write(`${PROGRAM}: ${message}\n`);
}

// A private-use character: JSON.stringify leaves it as is (it would escape a control character).
const BIG = '\uE000bigint:';

/**
 * JSON with bigints (revisions, fencing tokens) written as exact numbers:
 * JSON has no integer limit, and a revision above 2^53 must not be rounded.
 * Undefined fields are dropped, as JSON.stringify does.
 */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `${BIG}${v}` : v)).replace(
    new RegExp(`"${BIG}(-?[0-9]+)"`, 'g'),
    '$1',
  );
}

/** Writes `value` as one JSON line. */
export function printJson(stream: NodeJS.WritableStream, value: unknown): void {
  stream.write(`${toJson(value)}\n`);
}

/** The message of an error, for one-line reports. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
