// Host-affine retries, on real parts: the test stack's Temporal and NATS, two
// worker processes with different host names (each with its own checkpoint
// directory, as two machines would have), the real engine and SmolLM2.
// The worker that runs the job is SIGKILLed mid-decode:
//   - it comes back within its wait: the retry is scheduled on its host queue
//     (not the shared one the other worker polls), runs there, and resumes
//     from the checkpoint in that host's memory;
//   - it does not come back: after the wait the retry goes to the shared
//     queue, the other host takes it and recomputes from the document and the
//     tokens its heartbeat carried;
//   - the same with checkpoint copies in the NATS Object Store: the other host
//     restores the copy.
// Both end with the uninterrupted run's text. Workflow history shows where
// each attempt was scheduled.
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Objm } from '@nats-io/obj';
import { defaultPayloadConverter } from '@temporalio/client';
import { decodeTimeoutType } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostTaskQueue } from '../worker/host';
import type { GenerateHeartbeat } from '../workflows/types';
import { SMOLLM2 } from './engine-helpers';
import { PreemptRig, randomStep } from './helpers/preempt-rig';
import { compileWorkerEntry, kill, startWorkerProcess } from './helpers/worker-process';
import { testServiceConfig, waitFor } from './service-helpers';

const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
const EVERY = 8;
const root = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'spx-aff-'));
const config = testServiceConfig('affinity', { SPECONTEXT_THREADS: '1' });
const SHARED = config.temporal.taskQueue;
const HOSTS = [`aff-a-${process.pid}`, `aff-b-${process.pid}`] as const;
const rig = new PreemptRig(config);
const workers = new Map<string, ChildProcess>();
const BUCKET = `aff-ckpt-${process.pid}`;

/** A worker named `host`, with that host's own checkpoint directories. */
async function startHost(
  host: string,
  waitMs: number,
  extra: Record<string, string> = {},
): Promise<void> {
  const child = await startWorkerProcess({
    ...extra,
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

/** The running generation's last heartbeat (which host, how far), from Temporal. */
async function heartbeat(id: string): Promise<GenerateHeartbeat | undefined> {
  const desc = await rig.client.workflow.getHandle(id).describe();
  const payload = desc.raw.pendingActivities?.[0]?.heartbeatDetails?.payloads?.[0];
  return payload ? defaultPayloadConverter.fromPayload<GenerateHeartbeat>(payload) : undefined;
}

/** Waits until the job is past a checkpoint and a random step, then kills its host. */
async function killRunningHost(id: string): Promise<GenerateHeartbeat> {
  const step = randomStep(EVERY);
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

/** Task queue and outcome of each generateAnswer attempt, from workflow history. */
async function attempts(id: string): Promise<{ queue: string; timeout?: string }[]> {
  const history = await rig.client.workflow.getHandle(id).fetchHistory();
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

/**
 * Both hosts up (each asking a retry to wait `waitMs` for it), a job started,
 * its host killed and not restarted: the job's view, the killed host's last
 * heartbeat, the other host, and where each attempt was scheduled.
 */
async function loseRunningHost(name: string, waitMs: number, extra: Record<string, string> = {}) {
  for (const h of HOSTS) await startHost(h, waitMs, extra);
  const id = `aff-${name}-${Date.now()}`;
  await rig.startJob(id);
  const hb = await killRunningHost(id);
  const other = HOSTS.find((h) => h !== hb.host);
  const view = await rig.finished(id);
  expect(view.status).toBe('completed');
  expect(view.results?.[0]?.text).toBe(rig.reference);
  return { id, hb, other, stats: view.results?.[0]?.stats, tries: await attempts(id) };
}

beforeAll(async () => {
  if (!haveModel) return;
  compileWorkerEntry();
  await rig.open('affinity-test');
}, 300_000);

afterAll(async () => {
  await stopAll();
  await rig.close();
  rmSync(root, { recursive: true, force: true });
});

describe.skipIf(!haveModel)('host-affine retries (real Temporal, NATS, two hosts, SmolLM2)', () => {
  it('the killed host back within its wait: the retry runs there, from its checkpoint', async () => {
    for (const h of HOSTS) await startHost(h, 120_000);
    const id = `aff-back-${Date.now()}`;
    await rig.startJob(id);
    const hb = await killRunningHost(id);
    const other = HOSTS.find((h) => h !== hb.host);
    expect(workers.has(other as string)).toBe(true); // the other host polls the shared queue all along
    await startHost(hb.host, 120_000);
    const v = await rig.finished(id);
    expect(v.status).toBe('completed');
    const r = v.results?.[0];
    expect(r?.text).toBe(rig.reference);
    expect(r?.stats.host).toBe(hb.host);
    expect(r?.stats.resumedFrom).toBe('checkpoint');
    expect(r?.stats.tokensRecomputed).toBeLessThanOrEqual(EVERY);
    const tries = await attempts(id);
    expect(tries.map((t) => t.queue)).toEqual([SHARED, hostTaskQueue(SHARED, hb.host)]);
    expect(tries[0]?.timeout).toBe('HEARTBEAT');
    await stopAll();
  }, 400_000);

  it('the killed host not back in time: another host takes it and recomputes', async () => {
    const { hb, other, stats, tries } = await loseRunningHost('gone', 3_000);
    expect(stats?.host).toBe(other);
    // The other host has no copy of the checkpoint: it re-prefilled the tokens so far.
    expect(stats?.resumedFrom).toBe('recompute');
    expect(stats?.tokensRecomputed).toBeGreaterThanOrEqual(hb.tokensDone);
    expect(stats?.tokensReprefilled).toBeGreaterThan(0);
    expect(tries.map((t) => t.queue)).toEqual([SHARED, hostTaskQueue(SHARED, hb.host), SHARED]);
    expect(tries[0]?.timeout).toBe('HEARTBEAT');
    expect(tries[1]?.timeout).toBe('SCHEDULE_TO_START');
    await stopAll();
  }, 400_000);

  it('with copies in the NATS Object Store, the other host restores the copy instead', async () => {
    const copies = { SPECONTEXT_CHECKPOINT_NATS: 'true', SPECONTEXT_CHECKPOINT_BUCKET: BUCKET };
    const { hb, other, stats, tries } = await loseRunningHost('copy', 3_000, copies);
    expect(stats?.host).toBe(other);
    // The copy may miss the write the kill interrupted, never the prompt's.
    expect(stats?.resumedFrom).toBe('checkpoint');
    expect(stats?.tokensRecomputed).toBeLessThan(hb.tokensDone);
    expect(tries.map((t) => t.queue)).toEqual([SHARED, hostTaskQueue(SHARED, hb.host), SHARED]);
    // Once the answer is stored, the copy is deleted too.
    const bucket = await new Objm(rig.nc).open(BUCKET);
    await waitFor('the copy deleted', async () => (await bucket.list()).every((o) => o.deleted));
    await bucket.destroy();
    await stopAll();
  }, 400_000);
});
