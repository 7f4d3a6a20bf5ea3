// Recompute without a checkpoint, on the real model (SmolLM2): the retry
// re-prefills the prompt and the tokens the last heartbeat carried, and
// continues. Its output must equal the uninterrupted run's, greedy and
// sampled with the same seed (the engine skips the sampler ahead by one draw
// per re-prefilled sampled token). Runs checkpoint/resume.ts's planResume
// with the real engine, so the request it builds is what the activity sends.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { decodeTokens, encodeTokens } from '../activities/heartbeat';
import { type CheckpointDeps, planResume, reprefillable } from '../checkpoint/resume';
import { CheckpointStore } from '../checkpoint/store';
import { type Engine, openEngine, type SamplingOptions } from '../engine';
import { SMOLLM2 } from './engine-helpers';

const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
const dir = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'spx-rc-'));
const MAX = 40;
const quiet = { info() {}, warn() {} };
let engine: Engine;
let prompt: number[];

const GREEDY: SamplingOptions = { temperature: 0, seed: 0 };
const SAMPLED: SamplingOptions = { temperature: 0.9, topK: 20, seed: 11 };

async function uninterrupted(s: SamplingOptions): Promise<number[]> {
  return (await engine.generate({ tokens: prompt, maxTokens: MAX, stopTokenIds: [], ...s })).tokens;
}

beforeAll(async () => {
  if (!haveModel) return;
  engine = await openEngine({ model: SMOLLM2, threads: 2, maxBatch: 4 });
  prompt = engine.applyChatTemplate([
    { role: 'user', content: 'Write a short story about a lighthouse keeper and a storm.' },
  ]);
});
afterAll(async () => {
  await engine?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('heartbeat tokens round-trip, capped to the first ones', () => {
  const tokens = [0, 1, 49151, 151_935, 7];
  expect(decodeTokens(encodeTokens(tokens, 100))).toEqual(tokens);
  expect(decodeTokens(encodeTokens(tokens, 3))).toEqual([0, 1, 49151]);
  expect(decodeTokens(undefined)).toEqual([]);
  expect(decodeTokens('AAA')).toEqual([]); // not whole int32s
  // The last token is generated again; never past the budget.
  expect(reprefillable([5, 6, 7], 40)).toEqual([5, 6]);
  expect(reprefillable([5, 6, 7], 2)).toEqual([5]);
  expect(reprefillable([], 40)).toEqual([]);
});

describe.skipIf(!haveModel)('recompute from the document and the tokens so far (SmolLM2)', () => {
  for (const [name, sampling] of [
    ['greedy', GREEDY],
    ['sampled with the same seed', SAMPLED],
  ] as const) {
    test(`${name}: re-prefill + continue equals the uninterrupted run`, async () => {
      const full = await uninterrupted(sampling);
      expect(full.length).toBe(MAX);
      const done = 17;
      const prior = { tokensDone: done, resumes: 0, tokens: full.slice(0, done) };
      const r = await planResume(undefined, engine, 'job-0', prompt, MAX, prior, quiet);
      expect(r.restore).toBe(false);
      expect(r.plan).toEqual({
        resumes: 1,
        resumedFrom: 'recompute',
        tokensRecomputed: done,
        tokensReprefilled: done - 1,
      });
      const req = r.request(MAX, () => {});
      expect(req.tokens).toEqual([...prompt, ...full.slice(0, done - 1)]);
      const rest = await engine.generate({ ...req, stopTokenIds: [], ...sampling });
      expect([...r.generated, ...rest.tokens]).toEqual(full);
    });
  }

  test('without re-prefill (a sparse request), a recompute generates again from the prompt', async () => {
    const prior = { tokensDone: 12, resumes: 0, checkpointId: 'x', tokens: [1, 2, 3, 4] };
    const r = await planResume(undefined, engine, 'job-0', prompt, MAX, prior, quiet, false);
    expect(r.generated).toEqual([]);
    expect(r.plan).toEqual({
      resumes: 1,
      resumedFrom: 'recompute',
      tokensRecomputed: 12,
      tokensReprefilled: 0,
    });
    expect(r.request(MAX, () => {})).toEqual({ tokens: prompt, maxTokens: MAX });
  });

  test('sampled: without skipping the sampler ahead the continuation differs', async () => {
    // Shows the test above can fail: the RNG position is what makes it match.
    const full = await uninterrupted(SAMPLED);
    const kept = full.slice(0, 16);
    const rest = await engine.generate({
      tokens: [...prompt, ...kept],
      maxTokens: MAX - kept.length,
      stopTokenIds: [],
      ...SAMPLED,
    });
    expect([...kept, ...rest.tokens]).not.toEqual(full);
  });

  test('with a store whose checkpoint is gone: recompute, and a new file from the start', async () => {
    const full = await uninterrupted(SAMPLED);
    const store = new CheckpointStore({ dir, memoryCapBytes: 1 << 30, spillCapBytes: 0 });
    const deps: CheckpointDeps = { store, everyTokens: 8, everyMs: 0 };
    const id = CheckpointStore.idFor('job-gone', 0);
    const prior = { tokensDone: 20, resumes: 2, checkpointId: id, tokens: full.slice(0, 20) };
    const r = await planResume(deps, engine, id, prompt, MAX, prior, quiet);
    expect(r.plan).toMatchObject({ resumes: 3, resumedFrom: 'recompute', tokensRecomputed: 20 });
    const writes: number[] = [];
    const rest = await engine.generate({
      ...r.request(MAX, (e) => e.ok && writes.push(e.generated)),
      stopTokenIds: [],
      ...SAMPLED,
    });
    expect([...r.generated, ...rest.tokens]).toEqual(full);
    expect(writes.length).toBeGreaterThan(0);
    // The new file holds the prompt and every token so far, re-prefilled ones included.
    const seen = engine.inspectCheckpoint?.(store.pathFor(id));
    if (!seen?.ok) throw new Error('the recompute wrote no valid checkpoint');
    expect(Array.from(seen.tokens).slice(0, prompt.length + 19)).toEqual([
      ...prompt,
      ...full.slice(0, 19),
    ]);
    expect(seen.generated).toBe(writes.at(-1));
  });
});
