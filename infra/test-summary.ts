// Closing line of `make test`: the counts of the native tests (ctest JUnit)
// and the TypeScript tests (vitest JSON) together, as one
// "tests: N passed, N failed, N skipped" line that CI reads. Exits 1 when a
// report is missing or anything failed.
import { existsSync, readFileSync } from 'node:fs';

interface Counts {
  passed: number;
  failed: number;
  skipped: number;
}

function ctestCounts(file: string): Counts {
  const xml = readFileSync(file, 'utf8');
  const attr = (name: string) =>
    Number(new RegExp(`<testsuite[^>]*\\s${name}="(\\d+)"`).exec(xml)?.[1] ?? 0);
  const total = attr('tests');
  const failed = attr('failures') + attr('errors');
  const skipped = attr('skipped') + attr('disabled');
  return { passed: total - failed - skipped, failed, skipped };
}

interface VitestReport {
  numPassedTests: number;
  numFailedTests: number;
  numPendingTests: number;
  numTodoTests: number;
  testResults: { status: string; assertionResults: { status: string }[] }[];
}

function vitestCounts(file: string): Counts {
  const r = JSON.parse(readFileSync(file, 'utf8')) as VitestReport;
  // A file that failed outside its tests (import, setup hook) has no failed
  // test, its tests count as skipped, but it is a failure all the same.
  const brokenFiles = r.testResults.filter(
    (f) => f.status === 'failed' && !f.assertionResults.some((a) => a.status === 'failed'),
  ).length;
  return {
    passed: r.numPassedTests,
    failed: r.numFailedTests + brokenFiles,
    skipped: r.numPendingTests + r.numTodoTests,
  };
}

function main(ctestFile: string, vitestFile: string): number {
  const parts: [string, string, (f: string) => Counts][] = [
    ['native (ctest)', ctestFile, ctestCounts],
    ['vitest', vitestFile, vitestCounts],
  ];
  const sum: Counts = { passed: 0, failed: 0, skipped: 0 };
  let missing = false;
  for (const [name, file, read] of parts) {
    if (!existsSync(file)) {
      process.stdout.write(`${name}: no report at ${file} (the runner did not finish)\n`);
      missing = true;
      continue;
    }
    const c = read(file);
    process.stdout.write(`${name}: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped\n`);
    sum.passed += c.passed;
    sum.failed += c.failed;
    sum.skipped += c.skipped;
  }
  process.stdout.write(
    `tests: ${sum.passed} passed, ${sum.failed} failed, ${sum.skipped} skipped\n`,
  );
  return missing || sum.failed > 0 ? 1 : 0;
}

const [ctestFile, vitestFile] = process.argv.slice(2);
if (!ctestFile || !vitestFile) {
  process.stderr.write('usage: test-summary CTEST_JUNIT VITEST_JSON\n');
  process.exitCode = 2;
} else {
  process.exitCode = main(ctestFile, vitestFile);
}
