import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, describe, expect, it } from 'vitest';

/*
 * Docs that cannot rot: every ```ts block in README.md and docs/*.md is
 * typechecked as its reader would write it, importing `etcd-recipes` and
 * `etcd-recipes/testing` by name (the package's self-reference resolves them
 * to the built declarations, as an install would). A block opts out only with
 * a first line `// docs-check: skip — <reason>`.
 *
 * Blocks are excerpts: they may use, without declaring them, the names below
 * (an `Etcd3` called `client`, a `Session`, a `signal`, a `log`, the
 * reader's own `runJob(value, signal)`). A block
 * that declares one of them shadows it.
 */
const root = fileURLToPath(new URL('..', import.meta.url));
const built = existsSync(join(root, 'dist/esm/index.d.ts'));
const work = join(root, '.docs-check');
const SKIP = /^\/\/ docs-check: skip\b\s*[—:-]?\s*(.*)$/;

const ambient = `import type { Etcd3 } from 'etcd3';
import type { Election, Session } from 'etcd-recipes';
declare global {
  var client: Etcd3;
  var session: Session;
  var election: Election;
  var signal: AbortSignal;
  var log: { info(message: string): void; warn(message: string): void; error(message: string): void };
  /** The reader's own work, as docs/patterns.md says. */
  function runJob(value: string, signal: AbortSignal): Promise<string>;
}
export {};
`;

interface Block {
  doc: string;
  line: number;
  code: string;
}

function blocks(): Block[] {
  const docs = [
    'README.md',
    ...readdirSync(join(root, 'docs'))
      .filter((f) => f.endsWith('.md'))
      .sort()
      .map((f) => `docs/${f}`),
  ];
  return docs.flatMap((doc) => {
    const lines = readFileSync(join(root, doc), 'utf8').split('\n');
    const found: Block[] = [];
    for (let i = 0; i < lines.length; i++) {
      if (!/^```(ts|typescript)\s*$/.test(lines[i]!)) continue;
      const start = i + 1;
      let end = start;
      while (end < lines.length && !/^```\s*$/.test(lines[end]!)) end++;
      found.push({ doc, line: start + 1, code: lines.slice(start, end).join('\n') });
      i = end;
    }
    return found;
  });
}

describe.skipIf(!built)('code blocks in README.md and docs/', () => {
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('typecheck against the built package, or say why not', () => {
    const all = blocks();
    expect(all.length).toBeGreaterThanOrEqual(15);
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work);
    writeFileSync(join(work, 'ambient.d.ts'), ambient);
    const files = new Map<string, Block>();
    const unexplained: string[] = [];
    for (const [n, block] of all.entries()) {
      const first = block.code.split('\n', 1)[0]!.trim();
      const skip = SKIP.exec(first);
      if (skip) {
        if (skip[1]!.trim().length < 10)
          unexplained.push(`${block.doc}:${block.line}: a skipped block needs its reason beside the marker`);
        continue;
      }
      const file = join(work, `${block.doc.replace(/[/.]/g, '_')}_${n}.ts`);
      // `export {}` makes every block a module (top-level await; its names stay its own).
      writeFileSync(file, `${block.code}\nexport {};\n`);
      files.set(file, block);
    }
    const options: ts.CompilerOptions = {
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      lib: ['lib.es2023.d.ts', 'lib.esnext.disposable.d.ts'],
      types: ['node'],
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
    };
    const program = ts.createProgram({ rootNames: [join(work, 'ambient.d.ts'), ...files.keys()], options });
    const problems = ts.getPreEmitDiagnostics(program).map((d) => {
      const message = ts.flattenDiagnosticMessageText(d.messageText, '\n  ');
      const block = d.file && files.get(d.file.fileName);
      if (!d.file || !block) return `${d.file ? relative(root, d.file.fileName) : ''} ${message}`;
      const { line } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
      return `${block.doc}:${block.line + line}: ${message}`;
    });
    expect([...unexplained, ...problems]).toEqual([]);
  }, 120_000);
});
