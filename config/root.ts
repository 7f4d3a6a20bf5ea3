// The project's root folder, found from this file's location so that paths
// such as `.data/` and `.venv/` mean the same thing from the sources (vitest),
// from dist/ (the CLI) and from any working directory.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

function findRoot(start: string): string {
  let dir = start;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).name === 'specontext') return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no specontext package.json above ${start}`);
    dir = parent;
  }
}

export const projectRoot: string = findRoot(__dirname);

/** Resolves a configured path: absolute stays, relative is taken from the project root. */
export function fromRoot(p: string): string {
  return path.resolve(projectRoot, p);
}
