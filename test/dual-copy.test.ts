import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { useCluster } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const built =
  existsSync(new URL('../dist/esm/index.js', import.meta.url)) &&
  existsSync(new URL('../dist/cjs/index.js', import.meta.url));

// Runs against the built package (npm test builds first): both builds in one process.
describe.skipIf(!built)('the ESM and the CJS build in one process', () => {
  const etcd = useCluster();

  it('exclude each other: Mutexes from both on one shared Session and name never hold at once', async () => {
    const rounds = 15;
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['test/fixtures/dual-copy.mjs', etcd().endpoints.join(','), 'locks/dual', String(rounds)],
      { cwd: root, timeout: 90_000 },
    );
    const result = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
      twoCopies: boolean;
      maxInside: number;
      tokens: string[];
    };
    expect(result.twoCopies).toBe(true);
    expect(result.maxInside).toBe(1);
    // Each turn re-creates the key: every holder has its own fencing token, rising in the order of the turns.
    expect(result.tokens).toHaveLength(4 * rounds);
    const tokens = result.tokens.map(BigInt);
    for (let i = 1; i < tokens.length; i++) expect(tokens[i]! > tokens[i - 1]!, `turn ${i}`).toBe(true);
  }, 120_000);
});
