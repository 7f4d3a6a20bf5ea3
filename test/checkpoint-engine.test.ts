// Checkpoints through the TypeScript engine API on the real model (SmolLM2):
// a request checkpointed every few tokens and aborted mid-generation resumes
// from the file with exactly the uninterrupted run's tokens; inspection says
// what a file holds or why it is unusable; checkpointInFlight() writes one on
// demand (the SIGTERM path).
import { copyFileSync, existsSync, mkdtempSync, rmSync, truncateSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type CheckpointEvent, type Engine, openEngine } from '../engine';
import { SMOLLM2 } from './engine-helpers';

const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
const dir = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'spx-ck-'));
let engine: Engine;
let prompt: number[];
let full: number[];
const MAX = 40;

beforeAll(async () => {
  if (!haveModel) return;
  engine = await openEngine({ model: SMOLLM2, threads: 2, maxBatch: 4 });
  prompt = engine.applyChatTemplate([
    { role: 'user', content: 'Write a short story about a lighthouse keeper and a storm.' },
  ]);
  full = (await engine.generate({ tokens: prompt, maxTokens: MAX, stopTokenIds: [] })).tokens;
});
afterAll(async () => {
  await engine?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs with checkpoints every 6 tokens and aborts after the first one past 14 tokens. */
async function interrupted(file: string, saved: string): Promise<CheckpointEvent> {
  const abort = new AbortController();
  let at: CheckpointEvent | undefined;
  const r = await engine.generate({
    tokens: prompt,
    maxTokens: MAX,
    stopTokenIds: [],
    signal: abort.signal,
    checkpoint: {
      path: file,
      everyTokens: 6,
      onCheckpoint: (e) => {
        if (at || !e.ok || e.generated < 14) return;
        at = e;
        copyFileSync(file, saved); // what survives the process
        abort.abort();
      },
    },
  });
  expect(r.stats.finishReason).toBe('cancelled');
  expect(at).toBeDefined();
  return at as CheckpointEvent;
}

describe.skipIf(!haveModel)('checkpoints through the engine API (SmolLM2)', () => {
  test('resume from a checkpoint equals the uninterrupted run', async () => {
    const file = path.join(dir, 'a.spxckpt');
    const saved = path.join(dir, 'a-saved.spxckpt');
    const at = await interrupted(file, saved);
    expect(at.stallMs).toBeLessThan(5);
    const seen = engine.inspectCheckpoint?.(saved);
    if (!seen?.ok) throw new Error(`inspect failed: ${seen && !seen.ok ? seen.reason : ''}`);
    const tokens = Array.from(seen.tokens);
    expect(tokens.slice(0, prompt.length)).toEqual(prompt);
    const done = tokens.slice(prompt.length);
    expect(done.length).toBe(at.generated);
    expect(done).toEqual(full.slice(0, done.length));

    const rest = await engine.generate({
      tokens: [...prompt, ...done],
      maxTokens: MAX - done.length,
      stopTokenIds: [],
      checkpoint: { path: saved, restore: true, resumedGenerated: done.length },
    });
    expect(rest.stats.restoreError).toBeUndefined();
    expect(rest.stats.restoredTokens).toBe(prompt.length + done.length - 1);
    expect([...done, ...rest.tokens]).toEqual(full);
  });

  test('a truncated or foreign file is reported, not thrown', async () => {
    const file = path.join(dir, 'b.spxckpt');
    const saved = path.join(dir, 'b-saved.spxckpt');
    await interrupted(file, saved);
    truncateSync(saved, 1000);
    const seen = engine.inspectCheckpoint?.(saved);
    expect(seen?.ok).toBe(false);
    expect(seen && !seen.ok && seen.reason).toMatch(/truncated/);
    const missing = engine.inspectCheckpoint?.(path.join(dir, 'nope'));
    expect(missing && !missing.ok && missing.reason).toMatch(/missing/);
  });

  test('checkpointInFlight writes every running request now', async () => {
    const file = path.join(dir, 'c.spxckpt');
    let started!: () => void;
    const firstToken = new Promise<void>((r) => {
      started = r;
    });
    const stream = engine.stream({
      tokens: prompt,
      maxTokens: 12,
      stopTokenIds: [],
      checkpoint: { path: file },
    });
    const run = (async () => {
      for await (const _ of stream) started();
    })();
    await firstToken;
    const events = await engine.checkpointInFlight?.(10_000);
    expect(events?.length).toBe(1);
    expect(events?.[0]?.ok).toBe(true);
    expect(events?.[0]?.generated).toBeGreaterThan(0);
    expect(engine.inspectCheckpoint?.(file)?.ok).toBe(true);
    await run;
  });
});
