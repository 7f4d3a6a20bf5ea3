// The attention-distilled retrieval head (tools/train_head.py, docs/specontext.md
// "Distilled head"): SmolLM2-135M's recommended head. Assembled next to a model
// (`<model>-head`, as `make setup` does) it is what `eval fidelity` uses with no
// head flag; its lower layers are the target's own, so the engine runs them dense
// and scores with the trained layer on the target's hidden states. Against the
// head it was trained from (the same ten layers, the scoring layer's Q/K untouched:
// assembled `--untrained`) it must select more of the target's attention on the
// sparse layers. The text is the start of Moby-Dick, which training leaves out.
// The trained tensors are committed (test/fixtures/smollm2-head-distilled); the
// rest of each checkpoint is assembled from the real model here.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evalFidelity, MOBY_DICK } from '../cli/sparse';
import { SMOLLM2 } from './engine-helpers';

const ROOT = path.resolve(__dirname, '..');
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
const TENSORS = path.join(ROOT, 'test/fixtures/smollm2-head-distilled/qk-k10-spread24.safetensors');
const SCORING_LAYER = 9;
const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
if (!haveModel)
  console.warn(`skipping distilled-head tests: ${SMOLLM2} is missing (run the setup)`);

function assemble(out: string, untrained: boolean): void {
  const args = ['tools/train_head.py', 'assemble', '--target', SMOLLM2, '--out', out];
  const extra = untrained
    ? ['--untrained', '--layers', String(SCORING_LAYER + 1)]
    : ['--tensors', TENSORS];
  const r = spawnSync(PYTHON, [...args, ...extra], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`train_head.py assemble failed: ${r.stderr || r.error}`);
}

/** Mean recall over the layers the selection serves (the scoring layer and above). */
function sparseRecall(perLayer: number[]): number {
  const sparse = perLayer.slice(SCORING_LAYER);
  return sparse.reduce((a, b) => a + b, 0) / sparse.length;
}

describe.skipIf(!haveModel)('distilled retrieval head (SmolLM2-135M)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'spx-head-'));
    // The model under another name, with its recommended head next to it.
    mkdirSync(path.join(dir, 'models'));
    symlinkSync(path.resolve(SMOLLM2), path.join(dir, 'models', 'target'));
    assemble(path.join(dir, 'models', 'target-head'), false);
    assemble(path.join(dir, 'self'), true);
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('is the recommended head and selects more of the target attention than the self-derived one', async () => {
    const run = (dlm?: string) =>
      evalFidelity({
        model: path.join(dir, 'models', 'target'),
        dlm,
        text: MOBY_DICK,
        context: 1024,
        budgets: [128, 256],
        steps: 3,
        device: 'cpu',
      });
    const distilled = await run();
    const self = await run(path.join(dir, 'self'));
    expect(distilled.head).toContain('recommended');
    expect(distilled.head).toContain('target-head');
    // Its measured fallback threshold travels in the tensors' metadata into its
    // config.json and is the default with no --fallback; the untrained control has none.
    expect(distilled.fallbackMass).toBeCloseTo(0.85, 6);
    expect(distilled.head).toContain("the head's recommendation");
    expect(self.fallbackMass).toBe(0);
    expect(distilled.scoringLayer).toBe(SCORING_LAYER);
    // Both run their lower layers dense (they are the target's own).
    expect(self.head).toContain("shares the target's lower layers");
    for (const [i, b] of distilled.budgets.entries()) {
      expect(b.fullAttention).toBe(false);
      expect(Math.min(...b.recallPerLayer.slice(0, SCORING_LAYER))).toBeGreaterThan(0.999999);
      // Measured: 0.903 vs 0.869 (B = 128), 0.943 vs 0.915 (B = 256); a head that
      // lost its training (or a loader that dropped the tensors) lands at the baseline.
      const base = self.budgets[i];
      expect(base).toBeDefined();
      expect(sparseRecall(b.recallPerLayer)).toBeGreaterThan(
        sparseRecall(base?.recallPerLayer ?? []) + 0.01,
      );
    }
  });
});
