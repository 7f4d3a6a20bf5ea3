// Jobs survive preemption, on real parts: the test stack's Temporal and NATS,
// workers in their own processes with the real engine and SmolLM2 on the CPU.
// A worker is SIGKILLed at a random decode step and a new one started:
//   - the job completes with the uninterrupted run's text, resumed from the
//     checkpoint, recomputing at most one checkpoint interval of tokens;
//   - with the checkpoint corrupted or deleted meanwhile, it completes by
//     recompute (re-prefilling the tokens its heartbeat carried) with the same text;
//   - a batch of five, the worker killed twice: five results, one event each.
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { putJson } from '../blobstore';
import { batchJobWorkflow } from '../workflows';
import { batchItemJobId } from '../workflows/batch';
import type { BatchItem } from '../workflows/types';
import { SMOLLM2 } from './engine-helpers';
import { ASK, DEAD_WORKER_MS, DOC, OPTIONS, PreemptRig, randomStep } from './helpers/preempt-rig';
import { compileWorkerEntry, kill, running, startWorkerProcess } from './helpers/worker-process';
import { storedEvents, testServiceConfig, waitFor } from './service-helpers';

const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
const EVERY = 8;
const shm = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'spx-pre-'));
const env = {
  SPECONTEXT_CHECKPOINT_EVERY_TOKENS: String(EVERY),
  SPECONTEXT_CHECKPOINT_DIR: shm,
  SPECONTEXT_THREADS: '1',
};
const config = testServiceConfig('preempt', env);
const rig = new PreemptRig(config);
let worker: ChildProcess | undefined;

const startWorker = () =>
  startWorkerProcess({
    ...env,
    SPECONTEXT_TASK_QUEUE: config.temporal.taskQueue,
    SPECONTEXT_MAX_BATCH: '5',
  });

/** The worker of the previous test when it still runs, else a new one. */
async function ensureWorker(): Promise<void> {
  if (!running(worker)) worker = await startWorker();
}

const checkpointFiles = () => readdirSync(shm).filter((f) => f.endsWith('.spxckpt'));

/** Kills the worker once the job is past a random decode step with a checkpoint written. */
async function killMidway(id: string): Promise<number> {
  const step = randomStep(EVERY);
  await waitFor(
    `job ${id} at token ${step}`,
    async () => (await rig.tokensDone(id)) >= step,
    180_000,
    100,
  );
  await kill(worker as ChildProcess);
  return step;
}

beforeAll(async () => {
  if (!haveModel) return;
  // Workers run from JavaScript compiled here (tests run from the sources).
  compileWorkerEntry();
  await rig.open('preempt-test');
}, 300_000);

afterAll(async () => {
  if (worker) await kill(worker);
  await rig.close();
  rmSync(shm, { recursive: true, force: true });
});

describe.skipIf(!haveModel)('preemption (real Temporal, NATS, workers, SmolLM2)', () => {
  it('a SIGKILLed job resumes from its checkpoint with the uninterrupted text', async () => {
    await ensureWorker();
    const id = `pre-ck-${Date.now()}`;
    await rig.startJob(id);
    const step = await killMidway(id);
    expect(checkpointFiles().length).toBe(1);
    worker = await startWorker();
    const v = await rig.finished(id);
    expect(v.status).toBe('completed');
    const r = v.results?.[0];
    expect(r?.text).toBe(rig.reference);
    expect(r?.stats.resumes).toBe(1);
    expect(r?.stats.resumedFrom).toBe('checkpoint');
    expect(r?.stats.tokensRecomputed).toBeLessThanOrEqual(EVERY);
    expect(step).toBeGreaterThan(EVERY);
    expect(checkpointFiles()).toEqual([]); // removed once the job no longer needs it
  }, 300_000);

  it('SIGTERM checkpoints the in-flight request before the worker exits', async () => {
    await ensureWorker();
    const id = `pre-term-${Date.now()}`;
    await rig.startJob(id);
    await waitFor(`job ${id} decoding`, async () => (await rig.tokensDone(id)) >= 3, 180_000, 100);
    const child = worker as ChildProcess;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    worker = await startWorker();
    const v = await rig.finished(id);
    expect(v.status).toBe('completed');
    expect(v.results?.[0]?.text).toBe(rig.reference);
    expect(v.results?.[0]?.stats.resumedFrom).toBe('checkpoint');
  }, 300_000);

  for (const damage of ['corrupted', 'deleted'] as const) {
    it(`with the checkpoint ${damage}, it completes by recompute with the same text`, async () => {
      await ensureWorker();
      const id = `pre-${damage}-${Date.now()}`;
      await rig.startJob(id);
      await killMidway(id);
      const [file] = checkpointFiles();
      expect(file).toBeDefined();
      const full = path.join(shm, file as string);
      if (damage === 'deleted') rmSync(full);
      else writeFileSync(full, Buffer.alloc(4096, 7), { flag: 'r+' });
      worker = await startWorker();
      const v = await rig.finished(id);
      expect(v.status).toBe('completed');
      expect(v.results?.[0]?.text).toBe(rig.reference);
      expect(v.results?.[0]?.stats.resumedFrom).toBe('recompute');
      expect(v.results?.[0]?.stats.resumes).toBe(1);
      // The tokens so far came back with the heartbeat and were re-prefilled, not decoded again.
      expect(v.results?.[0]?.stats.tokensReprefilled).toBeGreaterThan(0);
    }, 300_000);
  }

  it('five jobs in one batch, the worker killed twice: five results, one event each', async () => {
    await ensureWorker();
    const batchId = `pre-batch-${Date.now()}`;
    const items: BatchItem[] = Array.from({ length: 5 }, (_, i) => ({
      customId: `c${i}`,
      job: {
        documentRef: '',
        instructions: [ASK],
        options: { ...OPTIONS, maxTokens: 24 + 4 * i },
        truncation: 'reject',
        heartbeatTimeoutMs: DEAD_WORKER_MS,
      },
    }));
    const docRef = await rig.blobs.put(DOC);
    for (const it of items) if (it.job) it.job.documentRef = docRef;
    await rig.client.workflow.start(batchJobWorkflow, {
      taskQueue: config.temporal.taskQueue,
      workflowId: batchId,
      args: [{ batchId, manifestRef: await putJson(rig.blobs, items), total: 5, concurrency: 5 }],
    });
    const ids = items.map((_, i) => batchItemJobId(batchId, i));
    for (const round of [1, 2]) {
      await waitFor(
        `batch progress before kill ${round}`,
        async () =>
          (await Promise.all(ids.map((id) => rig.tokensDone(id)))).some((n) => n >= 10 * round),
        180_000,
        100,
      );
      await kill(worker as ChildProcess);
      worker = await startWorker();
    }
    const views = await Promise.all(ids.map((id) => rig.finished(id)));
    for (const v of views) expect(v.status).toBe('completed');
    expect(views.reduce((n, v) => n + (v.results?.[0]?.stats.resumes ?? 0), 0)).toBeGreaterThan(0);
    for (const id of ids) {
      const events = await storedEvents(rig.nc, id);
      expect(events.filter((e) => e.type === 'completed').length).toBe(1);
    }
  }, 480_000);
});
