// The activities alone (Temporal's MockActivityEnvironment) over the real
// engine and SmolLM2, a real blob store and the test stack's NATS: heartbeats
// carry progress, a retry reads the previous heartbeat, cancellation frees the
// engine request, and prepare refuses or truncates what does not fit.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { Client, Connection } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createActivities } from '../activities';
import { FsBlobStore, getJson } from '../blobstore';
import { openEngine } from '../engine';
import type { Engine } from '../engine/types';
import { connectNats, ensureStreams } from '../nats/connection';
import { JobEvents } from '../nats/events';
import type { JobActivities } from '../workflows/activities';
import type {
  GenerateHeartbeat,
  GenerateOutput,
  InstructionResult,
  PrepareOutput,
} from '../workflows/types';
import { testServiceConfig } from './service-helpers';

const config = testServiceConfig('acts');
const dir = mkdtempSync(path.join(tmpdir(), 'acts-'));
const blobs = new FsBlobStore(dir);
let engine: Engine;
let nc: NatsConnection;
let connection: Connection;
let acts: JobActivities;

beforeAll(async () => {
  engine = await openEngine({ model: config.engine.model, maxBatch: 2, threads: 2 });
  nc = await connectNats(config.nats.url, 'acts-test');
  await ensureStreams(nc);
  connection = await Connection.connect({ address: config.temporal.address });
  acts = createActivities({
    engine,
    blobs,
    events: new JobEvents(nc),
    client: new Client({ connection, namespace: config.temporal.namespace }),
    host: 'test-host',
    hostTaskQueue: 'q-host-test-host',
    device: 'cpu',
    progressIntervalMs: 100,
  });
});

afterAll(async () => {
  await engine?.close();
  await nc?.drain();
  await connection?.close();
  rmSync(dir, { recursive: true, force: true });
});

const options = { maxTokens: 6, temperature: 0, seed: 0 };
const document = 'Maria lives in Lisbon and works as a baker. Her favourite colour is green.';

async function generate(env: MockActivityEnvironment, maxTokens = 6): Promise<GenerateOutput> {
  const preparedRef = await blobs.put(document);
  return env.run(acts.generateAnswer, {
    jobId: 'job-activity-test',
    index: 0,
    preparedRef,
    instruction: "What is Maria's favourite colour?",
    options: { ...options, maxTokens },
  });
}

describe('generateAnswer', () => {
  it('heartbeats progress and stores the answer with its stats', async () => {
    const env = new MockActivityEnvironment();
    const beats: GenerateHeartbeat[] = [];
    env.on('heartbeat', (d: GenerateHeartbeat) => beats.push(d));
    const out = await generate(env);
    const answer = await getJson<InstructionResult>(blobs, out.resultRef);
    expect(answer.text).toMatch(/green/i);
    expect(out.generatedTokens).toBe(answer.stats.generatedTokens);
    expect(beats.at(-1)).toMatchObject({
      index: 0,
      tokensDone: out.generatedTokens,
      host: 'test-host',
    });
    expect(beats.map((b) => b.tokensDone)).toEqual(
      [...beats.map((b) => b.tokensDone)].sort((a, b) => a - b),
    );
    expect(answer.stats).toMatchObject({
      resumes: 0,
      tokensRecomputed: 0,
      attention: 'full',
      device: 'cpu',
    });
  });

  it('on a retry, reads the last heartbeat and records the resume', async () => {
    const prior: GenerateHeartbeat = {
      index: 0,
      tokensDone: 4,
      host: 'other',
      taskQueue: 'q',
      resumes: 0,
    };
    const env = new MockActivityEnvironment({ heartbeatDetails: prior, attempt: 2 });
    const out = await generate(env);
    const answer = await getJson<InstructionResult>(blobs, out.resultRef);
    expect(answer.stats).toMatchObject({
      resumes: 1,
      resumedFrom: 'recompute',
      tokensRecomputed: 4,
    });
    expect(answer.text).toMatch(/green/i);
  });

  it('cancellation aborts the engine request and frees its slot', async () => {
    const before = engine.stats().cancelledRequests;
    const env = new MockActivityEnvironment();
    env.on('heartbeat', (d: GenerateHeartbeat) => {
      if (d.tokensDone >= 2) env.cancel();
    });
    const err = await generate(env, 300).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CancelledFailure);
    const s = engine.stats();
    expect(s.activeRequests).toBe(0);
    expect(s.cancelledRequests).toBe(before + 1);
  });
});

describe('prepareDocument', () => {
  const long = 'The sea is wide and the sky is blue. '.repeat(1200); // ~12k tokens

  it('refuses a document over the context with a readable, non-retryable reason', async () => {
    const documentRef = await blobs.put(long);
    const err = await new MockActivityEnvironment()
      .run(acts.prepareDocument, {
        jobId: 'j',
        documentRef,
        instructions: ['q'],
        options,
        truncation: 'reject' as const,
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect((err as ApplicationFailure).nonRetryable).toBe(true);
    expect((err as ApplicationFailure).message).toMatch(
      /document is \d+ tokens but at most \d+ fit/,
    );
  });

  it('truncates when asked, keeping what fits', async () => {
    const documentRef = await blobs.put(long);
    const out: PrepareOutput = await new MockActivityEnvironment().run(acts.prepareDocument, {
      jobId: 'j',
      documentRef,
      instructions: ['Summarise.'],
      options,
      truncation: 'keep_end' as const,
    });
    expect(out.truncatedTokens).toBeGreaterThan(0);
    expect(out.documentTokens).toBeLessThan(engine.info.maxContext - options.maxTokens);
    const kept = Buffer.from(await blobs.get(out.preparedRef)).toString('utf8');
    expect(long.trimEnd().endsWith(kept.trimEnd().slice(-200))).toBe(true);
    expect(kept.length).toBeLessThan(long.length);
  });

  it('refuses bytes that are not UTF-8 and blank documents', async () => {
    const env = new MockActivityEnvironment();
    const bad = await blobs.put(Buffer.from([0x48, 0xff, 0xfe, 0x21]));
    const blank = await blobs.put('  \n\t ');
    for (const [ref, reason] of [
      [bad, /not valid UTF-8/],
      [blank, /document is empty/],
    ] as const) {
      await expect(
        env.run(acts.prepareDocument, {
          jobId: 'j',
          documentRef: ref,
          instructions: ['q'],
          options,
          truncation: 'reject' as const,
        }),
      ).rejects.toThrow(reason);
    }
  });
});
