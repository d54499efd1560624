// Fails on any line over 120 characters in src/, test/, bench/, examples/ and scripts/. Biome's
// formatter keeps code within 120 columns but cannot break long strings or comments; this catches those.
// Paths listed in scripts/long-lines-todo.txt (one a line, `#` comments) are skipped until they are fixed;
// a listed path that has no long line left is reported too, so the list only shrinks.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const MAX = 120;
const DIRS = ['src', 'test', 'bench', 'examples', 'scripts'];
const TODO = 'scripts/long-lines-todo.txt';

const todo = new Set(
  readFileSync(TODO, 'utf8')
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter(Boolean),
);
const files = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '--', ...DIRS], {
  encoding: 'utf8',
})
  .split('\n')
  .filter(Boolean);

const problems = [];
const stillLong = new Set();
for (const file of files) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    continue; // deleted in the work tree but still in the index
  }
  text.split('\n').forEach((line, i) => {
    const width = [...line].length;
    if (width <= MAX) return;
    if (todo.has(file)) stillLong.add(file);
    else problems.push(`${file}:${i + 1}: ${width} characters (max ${MAX})`);
  });
}
for (const file of todo) {
  if (!stillLong.has(file)) problems.push(`${TODO}: ${file} has no line over ${MAX} characters; remove it`);
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
