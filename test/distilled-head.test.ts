// The attention-distilled retrieval head (tools/train_head.py, docs/specontext.md
// "Distilled head") loaded as an ordinary `--dlm` checkpoint, against the head it
// was trained from: the same seven target layers with the scoring layer's Q/K
// untouched (assembled `--untrained`, so both run under the same DLM rules).
// The text is the start of Moby-Dick, which training leaves out. The trained
// tensors are committed (test/fixtures/smollm2-head-distilled); the rest of the
// checkpoint is assembled from the real model here.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evalFidelity, MOBY_DICK } from '../cli/sparse';
import { SMOLLM2 } from './engine-helpers';

const ROOT = path.resolve(__dirname, '..');
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
if (!haveModel)
  console.warn(`skipping distilled-head tests: ${SMOLLM2} is missing (run the setup)`);

function assemble(out: string, untrained: boolean): void {
  const args = ['tools/train_head.py', 'assemble', '--target', SMOLLM2, '--out', out];
  const r = spawnSync(PYTHON, untrained ? [...args, '--untrained'] : args, {
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`train_head.py assemble failed: ${r.stderr || r.error}`);
}

describe.skipIf(!haveModel)('distilled retrieval head (SmolLM2-135M)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'spx-head-'));
    assemble(path.join(dir, 'distilled'), false);
    assemble(path.join(dir, 'self'), true);
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('selects more of the target attention than the self-derived head', async () => {
    const run = (head: string) =>
      evalFidelity({
        model: SMOLLM2,
        dlm: path.join(dir, head),
        text: MOBY_DICK,
        context: 1024,
        budgets: [128, 256],
        steps: 3,
        device: 'cpu',
      });
    const distilled = await run('distilled');
    const self = await run('self');
    expect(distilled.scoringLayer).toBe(6);
    for (const [i, b] of distilled.budgets.entries()) {
      expect(b.fullAttention).toBe(false);
      // Measured margins are in docs/specontext.md; a head that lost its training
      // (or a loader that dropped the trained tensors) lands at or below the baseline.
      const base = self.budgets[i];
      expect(base).toBeDefined();
      expect(b.recallMean).toBeGreaterThan((base?.recallMean ?? 1) + 0.01);
    }
  });
});
