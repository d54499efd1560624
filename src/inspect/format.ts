import type { RecipeInspection } from './discover.js';
import type { InspectedKey } from './read.js';

/*
 * Text for `etcd-recipes status`: one table per recipe, or JSON. Pure
 * functions of an inspection, so the CLI command stays a thin wrapper.
 */

/**
 * JSON of any inspection result, with bigint revisions as decimal strings
 * (JSON has no 64-bit integers).
 * @param space - indentation, as for `JSON.stringify` (default none)
 */
export function inspectionJSON(value: unknown, space?: number): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), space);
}

/** Options of {@link formatStatus}. */
export interface FormatOptions {
  /** JSON (pretty-printed, bigints as strings) instead of tables. */
  json?: boolean;
  /** Longest value shown in a table cell before it is cut with `…` (default 60). */
  maxValue?: number;
}

/** `etcd-recipes status` output for a list of inspections (see {@link inspectStatus}): tables, or JSON with `json`. */
export function formatStatus(inspections: readonly RecipeInspection[], options: FormatOptions = {}): string {
  if (options.json) return `${inspectionJSON(inspections, 2)}\n`;
  if (inspections.length === 0) return 'nothing found\n';
  return inspections.map((i) => formatInspection(i, options)).join('\n');
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** One recipe's inspection as a heading and a table (the text of `etcd-recipes status`). */
export function formatInspection(ri: RecipeInspection, options: FormatOptions = {}): string {
  const max = options.maxValue ?? 60;
  const cut = (s: string | undefined) => (s === undefined ? '-' : s.length > max ? `${s.slice(0, max - 1)}…` : s);
  const keyRow = (role: string, k: InspectedKey, extra: string[] = []) => [
    role,
    k.key,
    ...lease(k),
    k.createRevision.toString(),
    ...extra,
  ];
  const keyHeader = ['ROLE', 'KEY', 'LEASE', 'LEASE HEX', 'TTL', 'CREATE REV'];
  switch (ri.kind) {
    case 'lock':
    case 'semaphore':
    case 'rwmutex': {
      const i = ri.inspection;
      const rw = ri.kind === 'rwmutex';
      const modeOf = (k: InspectedKey) => ('mode' in k ? [String(k.mode)] : []);
      const rows = [
        ...i.holders.map((k) => keyRow('holder', k, modeOf(k))),
        ...i.waiters.map((k, n) => keyRow(`waiter ${n + 1}`, k, modeOf(k))),
      ];
      const permits = ri.kind === 'semaphore' ? `, ${ri.inspection.permits ?? 'unknown'} permits` : '';
      const held = i.holders.length ? `${i.holders.length} holding` : 'free';
      const cutNote = i.truncated ? ` (${i.total} keys, list cut)` : '';
      const waiting = `${i.waiters.length} waiting${cutNote}`;
      const head = `${ri.kind} ${i.name} (revision ${i.revision}${permits}): ${held}, ${waiting}`;
      return `${head}\n${table(rw ? [...keyHeader, 'MODE'] : keyHeader, rows)}`;
    }
    case 'election': {
      const i = ri.inspection;
      const all = [...(i.leader ? [i.leader] : []), ...i.candidates];
      const rows = all.map((c, n) => keyRow(n === 0 ? 'leader' : `candidate ${n}`, c, [cut(c.value)]));
      return (
        `election ${i.name} (revision ${i.revision}): ` +
        `${i.leader ? `led by ${i.leader.key}` : 'no leader'}, ${i.candidates.length} queued\n` +
        table([...keyHeader, 'VALUE'], rows)
      );
    }
    case 'queue':
    case 'priority-queue': {
      const i = ri.inspection;
      const h = i.head;
      const head =
        `${ri.kind} ${i.name} (revision ${i.revision}): ${plural(i.depth, 'item')}, ` +
        `${plural(i.waitingConsumers, 'consumer')} waiting`;
      if (!h) return `${head}\n`;
      return `${head}\n${table(
        ['HEAD', 'PRIORITY', 'MOD REV', 'AGE (REVISIONS)', 'VALUE'],
        [
          [
            h.key,
            h.priority === undefined ? '-' : String(h.priority),
            h.modRevision.toString(),
            h.ageRevisions.toString(),
            cut(h.value),
          ],
        ],
      )}`;
    }
    case 'work-queue': {
      const i = ri.inspection;
      const c = i.counts;
      const rows = [
        ...i.claimed.map((j) => [
          'claimed',
          j.id,
          String(j.attempts),
          j.ageRevisions.toString(),
          `${j.claim.leaseHex} (${ttl(j.claim.leaseTtl)})`,
          cut(j.value),
        ]),
        ...i.pending.map((j) => ['pending', j.id, String(j.attempts), j.ageRevisions.toString(), '-', cut(j.value)]),
        ...i.dead.map((j) => ['dead', j.id, '-', '-', '-', cut(j.value)]),
      ];
      return (
        `work-queue ${i.name} (revision ${i.revision}): ${c.pending} pending, ${c.claimed} claimed, ` +
        `${c.dead} dead, ${plural(c.waiting, 'worker')} waiting${i.truncated ? ' (lists cut)' : ''}\n` +
        table(['STATE', 'JOB', 'ATTEMPTS', 'AGE (REVISIONS)', 'CLAIMED BY (TTL)', 'VALUE'], rows)
      );
    }
    case 'service': {
      const i = ri.inspection;
      const rows = i.instances.map((s) => [
        s.id,
        s.address ?? '(not an instance)',
        ...lease(s).slice(1),
        cut(JSON.stringify(s.metadata)),
      ]);
      return (
        `service ${i.name} under ${i.prefix} (revision ${i.revision}): ${plural(i.total, 'instance')}\n` +
        table(['ID', 'ADDRESS', 'LEASE HEX', 'TTL', 'METADATA'], rows)
      );
    }
  }
}

function ttl(t: number | undefined): string {
  return t === undefined ? '-' : t < 0 ? 'expired' : `${t}s`;
}

function lease(k: InspectedKey): string[] {
  return [k.lease, k.leaseHex, ttl(k.leaseTtl)];
}

/** Columns padded to their widest cell; an empty table prints its header and `(none)`. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: string[]) =>
    `  ${cells
      .map((s, c) => s.padEnd(widths[c]!))
      .join('  ')
      .trimEnd()}`;
  return `${[line(header), ...(rows.length ? rows.map(line) : ['  (none)'])].join('\n')}\n`;
}
