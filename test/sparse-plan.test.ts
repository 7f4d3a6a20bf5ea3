// `specontext plan` through the native planner, against the same hand-computed
// Llama-3.1-8B thresholds as native/tests/planner_memory_test.cc (the
// arithmetic is written out there). Needs the built addon (engine/native.ts
// loads it and fails with a clear message when it is missing).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { computePlan, parameterCount, readModelShape } from '../cli/sparse';

function llamaDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'spx-plan-'));
  writeFileSync(
    path.join(dir, 'config.json'),
    JSON.stringify({
      hidden_size: 4096,
      intermediate_size: 14336,
      num_attention_heads: 32,
      num_hidden_layers: 32,
      num_key_value_heads: 8,
      vocab_size: 128256,
      tie_word_embeddings: false,
    }),
  );
  return dir;
}

// [GB, R, S_0, S_1, S_8, S_32], B = 2048, M_D = 60e6 B.
const expected: [number, number, number, number, number, number][] = [
  [80, 1, 389591, 400356, 496499, 2869867],
  [80, 8, 48698, 49994, 61568, 347264],
  [80, 32, 12174, 12456, 14968, 76985],
  [141, 1, 792093, 814038, 1010036, 5848383],
  [141, 8, 99011, 101705, 125760, 719579],
  [141, 32, 24752, 25383, 31016, 170064],
];

describe('plan: model shape', () => {
  it('counts Llama-3.1-8B parameters from its config', () => {
    expect(parameterCount(readModelShape(llamaDir()))).toBe(8030261248);
  });
});

describe('plan: native planner through the addon', () => {
  it.each(expected)('%d GB, R=%d', (gb, requests, s0, s1, s8, s32) => {
    const r = computePlan({
      model: llamaDir(),
      requests,
      budget: 2048,
      gpuMemory: gb,
      bytesPerParam: 2,
      dlmBytes: 60000000,
      length: [s8, s8 + 1],
    });
    expect(r.thresholds).toHaveLength(33);
    expect([r.thresholds[0], r.thresholds[1], r.thresholds[8], r.thresholds[32]]).toEqual([
      s0,
      s1,
      s8,
      s32,
    ]);
    expect(r.placements[0]?.hostLayers).toBe(8);
    expect(r.placements[0]?.hostLayerIds).toEqual([24, 25, 26, 27, 28, 29, 30, 31]);
    expect(r.placements[1]?.hostLayers).toBe(9);
  });

  it('rejects a bad budget with the native message', () => {
    expect(() =>
      computePlan({
        model: llamaDir(),
        requests: 1,
        budget: 0,
        gpuMemory: 80,
        bytesPerParam: 2,
      }),
    ).toThrow(/budget/);
  });
});
