// Code lines (non-blank, non-comment) of the library: src/ without src/testing, src/cli and src/bin.
// `node scripts/code-lines.mjs --files` lists them per file (issue 11 tracks this figure).
import { readFileSync } from 'node:fs';
import { execSync } from 'node:child_process';
const files = execSync("find src -name '*.ts'", { encoding: 'utf8' })
  .trim()
  .split('\n')
  .filter((f) => !/^src\/(testing|cli|bin)\//.test(f));
let total = 0;
const per = [];
for (const f of files) {
  let n = 0,
    inBlock = false;
  for (let l of readFileSync(f, 'utf8').split('\n')) {
    l = l.trim();
    if (inBlock) {
      if (l.includes('*/')) inBlock = false;
      continue;
    }
    if (!l) continue;
    if (l.startsWith('//')) continue;
    if (l.startsWith('/*')) {
      if (!l.includes('*/')) inBlock = true;
      continue;
    }
    n++;
  }
  total += n;
  per.push([n, f]);
}
per.sort((a, b) => b[0] - a[0]);
if (process.argv[2]) for (const p of per) console.log(p[0], p[1]);
console.log('total', total, 'files', files.length);
