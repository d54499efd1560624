import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

/*
 * Summarizes the .cpuprofile files (node --cpu-prof) in a folder: self time
 * by module (npm package, library file, node internals, GC) and by function.
 * Worker processes note their measured windows (<pid>.windows.json, on the
 * profile's hrtime clock); samples outside them (startup, setup) are left
 * out. Idle time is reported apart, not as a cost.
 *
 *   npx tsx bench/workers/profile-summary.ts <folder> [top]
 */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** Where a function lives: an npm package, a file of ours, node itself, or a V8 pseudo-frame. */
function moduleOf(url: string, name: string): string {
  if (!url) return name.startsWith('(') ? name : 'node (native)';
  // node:internal/http2/core.js → node:internal/http2 (HTTP/2 framing is grpc-js's cost, but shows as node's)
  if (url.startsWith('node:')) return url.replace(/\.js$/, '').replace(/^(node:internal\/[^/]+).*$/, '$1');
  const path = url.replace(/^file:\/\//, '');
  const nm = path.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = path.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (path.startsWith(repoRoot)) return relative(repoRoot, path);
  return path;
}

export interface ProfileSummary {
  /** Measured (non-idle) CPU ms in the windows, all profiles. */
  busyMs: number;
  idleMs: number;
  byModule: [string, number][];
  byFunction: [string, string, number][];
}

export function summarize(dir: string): ProfileSummary {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  const byModule = new Map<string, number>();
  const byFunction = new Map<string, { module: string; ms: number }>();
  let busyMs = 0;
  let idleMs = 0;
  for (const f of files) {
    if (!/\.\d+\.0\.\d+\.cpuprofile$/.test(f)) continue; // main threads only (tsx runs its loader in a worker)
    const pid = /\.(\d+)\.\d+\.\d+\.cpuprofile$/.exec(f)?.[1];
    let windows: [number, number][] | undefined;
    try {
      windows = JSON.parse(readFileSync(join(dir, `${pid}.windows.json`), 'utf8')) as [number, number][];
    } catch {
      windows = undefined; // a profile without windows counts whole
    }
    const profile = JSON.parse(readFileSync(join(dir, f), 'utf8')) as CpuProfile;
    const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
    // Each sample counts as one sampling period (the median gap): on a loaded machine a gap can be
    // time the process spent descheduled, which is no function's cost.
    const gaps = profile.timeDeltas.slice(1).sort((a, b) => a - b);
    const ms = (gaps[Math.floor(gaps.length / 2)] ?? 0) / 1000;
    let t = profile.startTime;
    for (let i = 0; i < profile.samples.length; i++) {
      t += profile.timeDeltas[i]!;
      if (windows && !windows.some(([a, b]) => t >= a && t <= b)) continue;
      const node = nodes.get(profile.samples[i]!)!;
      const { functionName, url, lineNumber } = node.callFrame;
      if (functionName === '(idle)') {
        idleMs += ms;
        continue;
      }
      busyMs += ms;
      const mod = moduleOf(url, functionName);
      byModule.set(mod, (byModule.get(mod) ?? 0) + ms);
      const fn = `${functionName || '(anonymous)'}${url ? ` :${lineNumber + 1}` : ''}`;
      const key = `${mod}\u0000${fn}`;
      const e = byFunction.get(key) ?? { module: mod, ms: 0 };
      e.ms += ms;
      byFunction.set(key, e);
    }
  }
  return {
    busyMs,
    idleMs,
    byModule: [...byModule].sort((a, b) => b[1] - a[1]),
    byFunction: [...byFunction]
      .map(([k, v]): [string, string, number] => [v.module, k.split('\u0000')[1]!, v.ms])
      .sort((a, b) => b[2] - a[2]),
  };
}

/** Markdown tables of the top `top` modules and functions by self time. */
export function formatSummary(title: string, s: ProfileSummary, top = 12): string {
  const pct = (ms: number) => `${((100 * ms) / s.busyMs).toFixed(1)} %`;
  const lines = [
    `\n#### CPU profile: ${title}\n`,
    `${s.busyMs.toFixed(0)} ms of samples in the measured phase (${s.idleMs.toFixed(0)} ms idle not counted); ` +
      'self time, main thread.\n',
    '| module (self time) | ms | share |',
    '|---|---|---|',
    ...s.byModule.slice(0, top).map(([m, ms]) => `| ${m} | ${ms.toFixed(0)} | ${pct(ms)} |`),
    '',
    '| function (self time) | module | ms | share |',
    '|---|---|---|---|',
    ...s.byFunction
      .slice(0, top)
      .map(([m, fn, ms]) => `| ${fn.replace(/\|/g, '\\|')} | ${m} | ${ms.toFixed(0)} | ${pct(ms)} |`),
  ];
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: tsx bench/workers/profile-summary.ts <folder> [top]');
    process.exit(2);
  }
  console.log(formatSummary(dir, summarize(dir), Number(process.argv[3] ?? 15)));
}
