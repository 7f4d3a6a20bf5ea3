// Checkpoint copies in the NATS Object Store (checkpoint/mirror.ts), on the
// test stack's real NATS server and the real model (SmolLM2): host A's engine
// writes checkpoints and each write is copied as one part; host B (another
// store directory, nothing local) rebuilds the file from the bucket and
// resumes with exactly the uninterrupted run's tokens. A fresh file replaces
// the old parts, a gap keeps only the prefix before it, and remove() deletes
// the copy.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { Objm } from '@nats-io/obj';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CheckpointMirror } from '../checkpoint/mirror';
import { type CheckpointDeps, planResume, resumeCounters } from '../checkpoint/resume';
import { CheckpointStore } from '../checkpoint/store';
import { stackConfig } from '../config/stack';
import { type Engine, openEngine } from '../engine';
import { connectNats } from '../nats/connection';
import { SMOLLM2 } from './engine-helpers';

const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
const root = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'spx-mir-'));
const MAX = 40;
const EVERY = 6;
const BUCKET = `ckpt-test-${process.pid}`;
const quiet = { info() {}, warn() {} };
let engine: Engine;
let nc: NatsConnection;
let mirror: CheckpointMirror;
let prompt: number[];
let full: number[];

function host(name: string): CheckpointDeps {
  const store = new CheckpointStore({
    dir: path.join(root, name),
    memoryCapBytes: 1 << 30,
    spillCapBytes: 0,
  });
  return { store, everyTokens: EVERY, everyMs: 0, mirror };
}

/** Host A generates with copies on and is stopped after `stopAt` tokens (as if preempted). */
async function runOnA(a: CheckpointDeps, id: string, stopAt: number): Promise<number[]> {
  const abort = new AbortController();
  const writes: number[] = [];
  const r = await engine.generate({
    tokens: prompt,
    maxTokens: MAX,
    stopTokenIds: [],
    signal: abort.signal,
    checkpoint: {
      path: a.store.pathFor(id),
      everyTokens: EVERY,
      onCheckpoint: (e) => {
        if (!e.ok) return;
        writes.push(e.fileBytes);
        mirror.written(id, e.path, e.bytes, e.fileBytes);
        if (e.generated >= stopAt) abort.abort();
      },
    },
  });
  expect(r.stats.finishReason).toBe('cancelled');
  await mirror.idle();
  return writes;
}

beforeAll(async () => {
  if (!haveModel) return;
  nc = await connectNats(stackConfig().nats.url, 'mirror-test');
  mirror = await CheckpointMirror.open(nc, BUCKET, quiet);
  engine = await openEngine({ model: SMOLLM2, threads: 2, maxBatch: 4 });
  prompt = engine.applyChatTemplate([
    { role: 'user', content: 'Write a short story about a lighthouse keeper and a storm.' },
  ]);
  full = (await engine.generate({ tokens: prompt, maxTokens: MAX, stopTokenIds: [] })).tokens;
});
afterAll(async () => {
  await engine?.close();
  if (nc) {
    await new Objm(nc)
      .open(BUCKET)
      .then((b) => b.destroy())
      .catch(() => {});
    await nc.drain();
  }
  rmSync(root, { recursive: true, force: true });
});

describe.skipIf(!haveModel)(
  'checkpoint copies in the NATS Object Store (real NATS, SmolLM2)',
  () => {
    test('another host restores from the copy and continues with the uninterrupted tokens', async () => {
      const [a, b] = [host('a'), host('b')];
      const id = CheckpointStore.idFor('job-remote', 0);
      const writes = await runOnA(a, id, 14);
      // One part per write, each starting where the previous one ended.
      const parts = await mirror.parts(id);
      expect(parts.map((p) => p.offset)).toEqual([0, ...writes.slice(0, -1)]);
      expect(parts.reduce((n, p) => n + p.size, 0)).toBe(writes.at(-1));
      expect(
        Buffer.compare(
          readFileSync(a.store.pathFor(id)).subarray(0, writes.at(-1)),
          Buffer.concat(await Promise.all(parts.map(async (p) => await readPart(p.name)))),
        ),
      ).toBe(0);

      expect(b.store.locate(id)).toBeUndefined();
      const before = resumeCounters.fromRemote;
      const prior = { tokensDone: 15, resumes: 0, checkpointId: id, tokens: full.slice(0, 15) };
      const r = await planResume(b, engine, id, prompt, MAX, prior, quiet);
      expect(r.plan.resumedFrom).toBe('checkpoint');
      expect(r.restore).toBe(true);
      expect(resumeCounters.fromRemote).toBe(before + 1);
      expect(r.generated).toEqual(full.slice(0, r.generated.length));
      expect(r.generated.length).toBeGreaterThanOrEqual(14);

      // B continues the same file; its appends are copied after A's parts.
      const rest = await engine.generate({
        ...r.request(MAX, (e) => e.ok && mirror.written(id, e.path, e.bytes, e.fileBytes)),
        stopTokenIds: [],
      });
      expect(rest.stats.restoreError).toBeUndefined();
      expect([...r.generated, ...rest.tokens]).toEqual(full);
      await mirror.idle();
      const after = await mirror.parts(id);
      expect(after.length).toBeGreaterThan(parts.length);
      expect(after.slice(0, parts.length)).toEqual(parts);

      mirror.remove(id);
      await mirror.idle();
      expect(await mirror.parts(id)).toEqual([]);
    });

    test('a file written from the start replaces the old parts; a gap keeps the prefix', async () => {
      const [a, b] = [host('a2'), host('b2')];
      const id = CheckpointStore.idFor('job-fresh', 0);
      await runOnA(a, id, 20);
      const old = await mirror.parts(id);
      expect(old.length).toBeGreaterThanOrEqual(3);
      // A new attempt that recomputed writes its file from offset 0 again.
      const writes = await runOnA(a, id, 8);
      const fresh = await mirror.parts(id);
      expect(fresh.map((p) => p.offset)).toEqual([0, ...writes.slice(0, -1)]);

      // Parts 0..1 and 3.., with part 2 lost: the copy is the prefix before the gap.
      await runOnA(a, id, 26);
      const parts = await mirror.parts(id);
      const lost = parts[2];
      if (!lost) throw new Error('expected at least three parts');
      await (await new Objm(nc).open(BUCKET)).delete(lost.name);
      const prefixTokens = await (async () => {
        expect(await mirror.fetch(id, b.store.pathFor(id))).toBe(true);
        const seen = engine.inspectCheckpoint?.(b.store.pathFor(id));
        if (!seen?.ok) throw new Error('the prefix is not a valid checkpoint');
        return seen.generated;
      })();
      expect(prefixTokens).toBeLessThan(26);
      expect(prefixTokens).toBeGreaterThan(0);
      mirror.remove(id);
      await mirror.idle();
    });
  },
);

async function readPart(name: string): Promise<Buffer> {
  const data = await (await new Objm(nc).open(BUCKET)).getBlob(name);
  if (!data) throw new Error(`part ${name} missing`);
  return Buffer.from(data);
}
