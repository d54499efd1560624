// Type-checks the ```ts blocks of the given docs against src/ (each block its own module), so that
// guides stay compilable. Blocks containing "// needs:" (API not there yet) are skipped.
// Globals a snippet may use without defining: client (Etcd3), signal, runJob, doTheWork.
// Run: node scripts/check-doc-snippets.mjs docs/patterns.md docs/run-with-session.md docs/multi-lock.md
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const dir = mkdtempSync(join(root, '.doc-snippets-'));
const preamble = [
  "import type { Etcd3 } from 'etcd3';",
  'declare const client: Etcd3;',
  'declare const signal: AbortSignal;',
  'declare function runJob(value: string, signal: AbortSignal): Promise<string>;',
  'declare function doTheWork(value: string, options: { signal: AbortSignal }): Promise<void>;',
].join('\n');
let count = 0;
try {
  for (const doc of process.argv.slice(2)) {
    const blocks = [...readFileSync(join(root, doc), 'utf8').matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
    blocks.forEach((block, i) => {
      if (block.includes('// needs:')) return;
      const code = block.replaceAll("'etcd-recipes'", "'../src/index.js'");
      writeFileSync(join(dir, `${basename(doc, '.md')}-${i}.ts`), `${preamble}\n${code}\nexport {};\n`);
      count++;
    });
  }
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ extends: '../tsconfig.json', include: ['./*.ts'] }));
  execFileSync(
    process.execPath,
    [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.json'), '--noEmit'],
    { stdio: 'inherit' },
  );
  console.log(`${count} snippets compile`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
