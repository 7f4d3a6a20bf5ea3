// Host-affine retries, on real parts: the test stack's Temporal and NATS, two
// worker processes with different host names (each with its own checkpoint
// directory, as two machines would have), the real engine and SmolLM2.
// The worker that runs the job is SIGKILLed mid-decode:
//   - it comes back within its wait: the retry is scheduled on its host queue
//     (not the shared one the other worker polls), runs there, and resumes
//     from the checkpoint in that host's memory;
//   - it does not come back: after the wait the retry goes to the shared
//     queue, the other host takes it and recomputes from the document and the
//     tokens its heartbeat carried.
// Both end with the uninterrupted run's text. Workflow history shows where
// each attempt was scheduled.
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { NatsConnection } from '@nats-io/nats-core';
import { Client, Connection, defaultPayloadConverter } from '@temporalio/client';
import { decodeTimeoutType } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { messagesFor } from '../activities/prompt';
import { type RunningApi, startApi } from '../api';
import type { JobView } from '../api/jobs';
import { openBlobStore } from '../blobstore';
import type { BlobStore } from '../blobstore/store';
import { openEngine } from '../engine';
import { connectNats } from '../nats/connection';
import { hostTaskQueue } from '../worker/host';
import { documentJobWorkflow } from '../workflows';
import type { GenerateHeartbeat, GenerationOptions } from '../workflows/types';
import { SMOLLM2 } from './engine-helpers';
import { compileWorkerEntry, kill, startWorkerProcess } from './helpers/worker-process';
import { testServiceConfig, waitFor } from './service-helpers';

const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
const EVERY = 8;
const root = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'spx-aff-'));
const config = testServiceConfig('affinity', { SPECONTEXT_THREADS: '1' });
const SHARED = config.temporal.taskQueue;
const OPTIONS: GenerationOptions = { maxTokens: 56, temperature: 0, seed: 0 };
const DOC =
  'The lighthouse on Gull Rock was kept by Ines for forty years. Each night she climbed ' +
  'one hundred and twelve steps to light the lamp, and each morning she wrote the weather ' +
  'in a green notebook. During the great storm of 1953 the lamp failed twice.';
const ASK = 'Tell the story of the storm night in detail.';
const HOSTS = [`aff-a-${process.pid}`, `aff-b-${process.pid}`] as const;

let client: Client;
let connection: Connection;
let api: RunningApi;
let nc: NatsConnection;
let blobs: BlobStore;
let reference: string;
const workers = new Map<string, ChildProcess>();

/** A worker named `host`, with that host's own checkpoint directories. */
async function startHost(host: string, waitMs: number): Promise<void> {
  const child = await startWorkerProcess({
    SPECONTEXT_TASK_QUEUE: SHARED,
    SPECONTEXT_THREADS: '1',
    SPECONTEXT_WORKER_HOST: host,
    SPECONTEXT_AFFINITY_WAIT_MS: String(waitMs),
    SPECONTEXT_CHECKPOINT_EVERY_TOKENS: String(EVERY),
    SPECONTEXT_CHECKPOINT_DIR: path.join(root, host, 'shm'),
    SPECONTEXT_CHECKPOINT_SPILL_DIR: path.join(root, host, 'spill'),
  });
  workers.set(host, child);
}

async function stopAll(): Promise<void> {
  for (const child of workers.values()) await kill(child);
  workers.clear();
}

const view = async (id: string): Promise<JobView> =>
  (await (await fetch(`${api.url}/v1/jobs/${id}`)).json()) as JobView;

async function startJob(id: string): Promise<void> {
  await client.workflow.start(documentJobWorkflow, {
    taskQueue: SHARED,
    workflowId: id,
    args: [
      {
        jobId: id,
        documentRef: await blobs.put(DOC),
        instructions: [ASK],
        options: OPTIONS,
        truncation: 'reject',
        heartbeatTimeoutMs: 4_000,
      },
    ],
  });
}

/** The running generation's last heartbeat (which host, how far), from Temporal. */
async function heartbeat(id: string): Promise<GenerateHeartbeat | undefined> {
  const desc = await client.workflow.getHandle(id).describe();
  const payload = desc.raw.pendingActivities?.[0]?.heartbeatDetails?.payloads?.[0];
  return payload ? defaultPayloadConverter.fromPayload<GenerateHeartbeat>(payload) : undefined;
}

/** Waits until the job is past a checkpoint and a random step, then kills its host. */
async function killRunningHost(id: string): Promise<GenerateHeartbeat> {
  const step = EVERY + 2 + Math.floor(Math.random() * (OPTIONS.maxTokens / 2 - EVERY));
  const hb = await waitFor(
    `job ${id} at token ${step} with a checkpoint`,
    async () => {
      const h = await heartbeat(id);
      return h && h.tokensDone >= step && h.checkpointId ? h : undefined;
    },
    180_000,
    100,
  );
  await kill(workers.get(hb.host) as ChildProcess);
  workers.delete(hb.host);
  return hb;
}

const finished = (id: string) =>
  waitFor(
    `job ${id}`,
    async () => {
      const v = await view(id);
      return ['completed', 'failed', 'cancelled'].includes(v.status) && v;
    },
    240_000,
  );

/** Task queue and outcome of each generateAnswer attempt, from workflow history. */
async function attempts(id: string): Promise<{ queue: string; timeout?: string }[]> {
  const history = await client.workflow.getHandle(id).fetchHistory();
  const out = new Map<string, { queue: string; timeout?: string }>();
  for (const e of history.events ?? []) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s?.activityType?.name === 'generateAnswer') {
      out.set(String(e.eventId), { queue: s.taskQueue?.name ?? '' });
    }
    const t = e.activityTaskTimedOutEventAttributes;
    const a = t && out.get(String(t.scheduledEventId));
    const info = t?.failure?.timeoutFailureInfo ?? t?.failure?.cause?.timeoutFailureInfo;
    if (a) a.timeout = decodeTimeoutType(info?.timeoutType) ?? 'unknown';
  }
  return [...out.values()];
}

beforeAll(async () => {
  if (!haveModel) return;
  compileWorkerEntry();
  const engine = await openEngine({ model: SMOLLM2, threads: 2 });
  reference = (
    await engine.generate({
      messages: messagesFor(DOC, ASK),
      maxTokens: OPTIONS.maxTokens,
      temperature: 0,
      seed: 0,
    })
  ).text;
  await engine.close();
  connection = await Connection.connect({ address: config.temporal.address });
  client = new Client({ connection, namespace: config.temporal.namespace });
  nc = await connectNats(config.nats.url, 'affinity-test');
  blobs = await openBlobStore(config.blobs, nc);
  api = await startApi(config, { port: 0 });
}, 300_000);

afterAll(async () => {
  await stopAll();
  await api?.stop();
  await blobs?.close();
  await nc?.drain();
  await connection?.close();
  rmSync(root, { recursive: true, force: true });
});

describe.skipIf(!haveModel)('host-affine retries (real Temporal, NATS, two hosts, SmolLM2)', () => {
  it('the killed host back within its wait: the retry runs there, from its checkpoint', async () => {
    for (const h of HOSTS) await startHost(h, 120_000);
    const id = `aff-back-${Date.now()}`;
    await startJob(id);
    const hb = await killRunningHost(id);
    const other = HOSTS.find((h) => h !== hb.host);
    expect(workers.has(other as string)).toBe(true); // the other host polls the shared queue all along
    await startHost(hb.host, 120_000);
    const v = await finished(id);
    expect(v.status).toBe('completed');
    const r = v.results?.[0];
    expect(r?.text).toBe(reference);
    expect(r?.stats.host).toBe(hb.host);
    expect(r?.stats.resumedFrom).toBe('checkpoint');
    expect(r?.stats.tokensRecomputed).toBeLessThanOrEqual(EVERY);
    const tries = await attempts(id);
    expect(tries.map((t) => t.queue)).toEqual([SHARED, hostTaskQueue(SHARED, hb.host)]);
    expect(tries[0]?.timeout).toBe('HEARTBEAT');
    await stopAll();
  }, 400_000);

  it('the killed host not back in time: another host takes it and recomputes', async () => {
    const WAIT_MS = 3_000;
    for (const h of HOSTS) await startHost(h, WAIT_MS);
    const id = `aff-gone-${Date.now()}`;
    await startJob(id);
    const hb = await killRunningHost(id);
    const other = HOSTS.find((h) => h !== hb.host);
    const v = await finished(id);
    expect(v.status).toBe('completed');
    const r = v.results?.[0];
    expect(r?.text).toBe(reference);
    expect(r?.stats.host).toBe(other);
    // The other host has no copy of the checkpoint: it re-prefilled the tokens so far.
    expect(r?.stats.resumedFrom).toBe('recompute');
    expect(r?.stats.tokensRecomputed).toBeGreaterThanOrEqual(hb.tokensDone);
    expect(r?.stats.tokensReprefilled).toBeGreaterThan(0);
    const tries = await attempts(id);
    expect(tries.map((t) => t.queue)).toEqual([SHARED, hostTaskQueue(SHARED, hb.host), SHARED]);
    expect(tries[0]?.timeout).toBe('HEARTBEAT');
    expect(tries[1]?.timeout).toBe('SCHEDULE_TO_START');
    await stopAll();
  }, 400_000);
});
