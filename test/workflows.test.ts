// Workflow-level unit tests on Temporal's time-skipping test server (the real
// server binary from the venv). The activities here are STAND-INS, not the
// engine: each test scripts what prepare/generate/store do, to drive the
// workflows through retries, timeouts, cancellation and continue-as-new.
// Integration with the real engine and servers is in service.test.ts.
import path from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker, type WorkflowBundle } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../config/root';
import { workflowBundle } from '../worker/worker';
import {
  batchJobWorkflow,
  batchProgressQuery,
  cancelBatchSignal,
  cancelJobSignal,
  cancelJobUpdate,
  documentJobWorkflow,
  jobProgressQuery,
} from '../workflows';
import { BAD_INPUT, type JobActivities } from '../workflows/activities';
import type { BatchItem, BatchOutcome, DocumentJobInput, JobEvent } from '../workflows/types';

const TEST_SERVER = path.join(projectRoot, '.venv', 'bin', 'temporal-test-server');

let env: TestWorkflowEnvironment;
let bundle: WorkflowBundle;
let queueNo = 0;

beforeAll(async () => {
  // The failures these tests provoke on purpose would otherwise flood the log.
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: TEST_SERVER } },
  });
  bundle = await workflowBundle();
});

afterAll(async () => {
  await env?.teardown();
});

/** Stand-in activities: a record of calls plus per-test overrides. */
function standIns(over: Partial<JobActivities> = {}) {
  const events: JobEvent[] = [];
  const calls: Record<string, number> = {};
  const blobs = new Map<string, unknown>();
  const count = (name: string) => {
    calls[name] = (calls[name] ?? 0) + 1;
  };
  const acts: JobActivities = {
    async prepareDocument(input) {
      count('prepareDocument');
      return { preparedRef: input.documentRef, documentTokens: 100, truncatedTokens: 0 };
    },
    async generateAnswer(input) {
      count('generateAnswer');
      return {
        resultRef: `result-${input.jobId}-${input.index}`,
        generatedTokens: 5,
        finishReason: 'stop',
      };
    },
    async storeJobResult(input) {
      count('storeJobResult');
      return `job-result-${input.jobId}`;
    },
    async publishJobEvent(event) {
      count('publishJobEvent');
      events.push(event);
    },
    async loadBatchItems(ref, start, n) {
      count('loadBatchItems');
      return (blobs.get(ref) as BatchItem[]).slice(start, start + n);
    },
    async storeBatchOutcomes(outcomes) {
      count('storeBatchOutcomes');
      const ref = `segment-${blobs.size}`;
      blobs.set(ref, outcomes);
      return ref;
    },
  };
  for (const [k, v] of Object.entries(over)) {
    const name = k as keyof JobActivities;
    const f = v as (...a: unknown[]) => Promise<unknown>;
    (acts as unknown as Record<string, unknown>)[name] = (...a: unknown[]) => {
      count(name);
      return f(...a);
    };
  }
  return { acts, events, calls, blobs };
}

async function withWorker<T>(
  acts: JobActivities,
  fn: (taskQueue: string) => Promise<T>,
): Promise<T> {
  const taskQueue = `wf-test-${++queueNo}`;
  const worker = await Worker.create({
    connection: env.nativeConnection,
    taskQueue,
    workflowBundle: bundle,
    activities: acts,
    // As in the real worker: heartbeats, and so cancellations, within a second.
    maxHeartbeatThrottleInterval: '1s',
  });
  return worker.runUntil(fn(taskQueue));
}

const job = (id: string, instructions = ['q1', 'q2']): DocumentJobInput => ({
  jobId: id,
  documentRef: 'sha256:doc',
  instructions,
  options: { maxTokens: 8, temperature: 0, seed: 0 },
  truncation: 'reject',
});

/** Resolves when the activity is cancelled (the stand-in for an engine request being aborted). */
function waitForCancel(onCancelled: () => void) {
  return async () => {
    const ctx = Context.current();
    for (;;) {
      ctx.heartbeat({ index: 0, tokensDone: 1, host: 'h', taskQueue: 'q', resumes: 0 });
      try {
        await ctx.sleep(500);
      } catch (err) {
        onCancelled();
        throw err;
      }
    }
  };
}

describe('documentJobWorkflow (stand-in activities)', () => {
  it('prepares, generates each instruction, stores and publishes completion', async () => {
    const s = standIns();
    const out = await withWorker(s.acts, (taskQueue) =>
      env.client.workflow.execute(documentJobWorkflow, {
        taskQueue,
        workflowId: 'wf-ok',
        args: [job('wf-ok')],
      }),
    );
    expect(out).toEqual({ jobId: 'wf-ok', status: 'completed', resultRef: 'job-result-wf-ok' });
    expect(s.calls).toMatchObject({ prepareDocument: 1, generateAnswer: 2, storeJobResult: 1 });
    expect(s.events).toEqual([
      { type: 'completed', jobId: 'wf-ok', resultRef: 'job-result-wf-ok' },
    ]);
  });

  it('retries a failing generation and then succeeds', async () => {
    let attempts = 0;
    const s = standIns({
      async generateAnswer(input) {
        attempts += 1;
        if (attempts < 3) throw ApplicationFailure.retryable('engine hiccup', 'GenerationError');
        return { resultRef: `r-${input.index}`, generatedTokens: 3, finishReason: 'stop' };
      },
    });
    const out = await withWorker(s.acts, (taskQueue) =>
      env.client.workflow.execute(documentJobWorkflow, {
        taskQueue,
        workflowId: 'wf-retry',
        args: [job('wf-retry', ['only'])],
      }),
    );
    expect(out.status).toBe('completed');
    expect(attempts).toBe(3);
  });

  it('times out a generation that stops heartbeating, and retries it', async () => {
    let attempts = 0;
    const s = standIns({
      async generateAnswer(input) {
        attempts += 1;
        // First attempt: a worker that hangs (no heartbeats) until cancelled.
        if (attempts === 1) await Context.current().sleep(10 * 60_000);
        return { resultRef: `r-${input.index}`, generatedTokens: 3, finishReason: 'stop' };
      },
    });
    const out = await withWorker(s.acts, (taskQueue) =>
      env.client.workflow.execute(documentJobWorkflow, {
        taskQueue,
        workflowId: 'wf-timeout',
        // The test server does not skip time while an activity runs: keep it short.
        args: [{ ...job('wf-timeout', ['only']), heartbeatTimeoutMs: 2_000 }],
      }),
    );
    expect(out.status).toBe('completed');
    expect(attempts).toBe(2);
  });

  it('fails bad input at once, non-retryable, with the readable reason', async () => {
    const s = standIns({
      async prepareDocument() {
        throw ApplicationFailure.nonRetryable(
          'document is 9000 tokens but at most 8000 fit',
          BAD_INPUT,
        );
      },
    });
    const err = await withWorker(s.acts, (taskQueue) =>
      env.client.workflow
        .execute(documentJobWorkflow, { taskQueue, workflowId: 'wf-bad', args: [job('wf-bad')] })
        .then(
          () => undefined,
          (e: unknown) => e,
        ),
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.message).toBe('document is 9000 tokens but at most 8000 fit');
    expect(cause.type).toBe(BAD_INPUT);
    expect(s.calls.prepareDocument).toBe(1);
    expect(s.calls.generateAnswer).toBeUndefined();
    expect(s.events.map((e) => e.type)).toEqual(['failed']);
  });

  it('cancels on the cancel signal: the generation is aborted and no result is published', async () => {
    let cancelled = 0;
    const s = standIns({ generateAnswer: waitForCancel(() => cancelled++) });
    const out = await withWorker(s.acts, async (taskQueue) => {
      const h = await env.client.workflow.start(documentJobWorkflow, {
        taskQueue,
        workflowId: 'wf-cancel',
        args: [job('wf-cancel')],
      });
      // Wait (in skipped time) until generation runs, then cancel.
      for (let i = 0; i < 100; i++) {
        if ((await h.query(jobProgressQuery)).stage === 'generating') break;
        await env.sleep(200);
      }
      await h.signal(cancelJobSignal, 'test');
      return h.result();
    });
    expect(out).toEqual({ jobId: 'wf-cancel', status: 'cancelled' });
    expect(cancelled).toBe(2);
    expect(s.calls.storeJobResult).toBeUndefined();
    // Local activities run at least once; the real publisher dedupes by Nats-Msg-Id.
    expect([...new Set(s.events.map((e) => e.type))]).toEqual(['cancelled']);
  });

  it('cancels on the cancel update, which answers with the progress', async () => {
    let cancelled = 0;
    const s = standIns({ generateAnswer: waitForCancel(() => cancelled++) });
    const { out, progress } = await withWorker(s.acts, async (taskQueue) => {
      const h = await env.client.workflow.start(documentJobWorkflow, {
        taskQueue,
        workflowId: 'wf-cancel-update',
        args: [job('wf-cancel-update', ['only'])],
      });
      for (let i = 0; i < 100; i++) {
        if ((await h.query(jobProgressQuery)).stage === 'generating') break;
        await env.sleep(200);
      }
      const progress = await h.executeUpdate(cancelJobUpdate, { args: ['test'] });
      return { out: await h.result(), progress };
    });
    expect(progress.stage).toBe('generating');
    expect(out).toEqual({ jobId: 'wf-cancel-update', status: 'cancelled' });
    expect(cancelled).toBe(1);
  });

  it('ends Cancelled on a Temporal cancel request', async () => {
    let cancelled = 0;
    const s = standIns({ generateAnswer: waitForCancel(() => cancelled++) });
    const err = await withWorker(s.acts, async (taskQueue) => {
      const h = await env.client.workflow.start(documentJobWorkflow, {
        taskQueue,
        workflowId: 'wf-cancel-req',
        args: [job('wf-cancel-req', ['only'])],
      });
      for (let i = 0; i < 100; i++) {
        if ((await h.query(jobProgressQuery)).stage === 'generating') break;
        await env.sleep(200);
      }
      await h.cancel();
      return h.result().then(
        () => undefined,
        (e: unknown) => e,
      );
    });
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect((err as WorkflowFailedError).cause?.name).toBe('CancelledFailure');
    expect(cancelled).toBe(1);
    expect([...new Set(s.events.map((e) => e.type))]).toEqual(['cancelled']);
  });
});

describe('batchJobWorkflow (stand-in activities)', () => {
  const manifest = (n: number, bad: number[] = []): BatchItem[] =>
    Array.from({ length: n }, (_, i) =>
      bad.includes(i)
        ? { customId: `c${i}`, error: 'line 3: malformed JSON' }
        : { customId: `c${i}`, job: { ...job('x'), documentRef: `sha256:doc${i}` } },
    );

  it('counts outcomes, isolates failures, and continues as new', async () => {
    const s = standIns({
      async prepareDocument(input) {
        if (input.documentRef === 'sha256:doc4')
          throw ApplicationFailure.nonRetryable('too long', BAD_INPUT);
        return { preparedRef: input.documentRef, documentTokens: 1, truncatedTokens: 0 };
      },
    });
    s.blobs.set('manifest', manifest(7, [2]));
    const { out, runs } = await withWorker(s.acts, async (taskQueue) => {
      const h = await env.client.workflow.start(batchJobWorkflow, {
        taskQueue,
        workflowId: 'batch-a',
        args: [
          { batchId: 'batch-a', manifestRef: 'manifest', total: 7, concurrency: 2, itemsPerRun: 3 },
        ],
      });
      const out = await h.result();
      const desc = await h.describe();
      return { out, runs: desc.runId !== h.firstExecutionRunId };
    });
    expect(out.status).toBe('completed');
    expect(out.counts).toEqual({ total: 7, completed: 5, failed: 2, cancelled: 0 });
    expect(runs).toBe(true); // continued as new at least once
    const outcomes = out.segments.flatMap((r) => s.blobs.get(r) as BatchOutcome[]);
    expect(outcomes.map((o) => o.index).sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
    const failed = outcomes.filter((o) => o.status === 'failed');
    expect(failed.map((o) => [o.customId, o.error])).toEqual(
      expect.arrayContaining([
        ['c2', 'line 3: malformed JSON'],
        ['c4', 'too long'],
      ]),
    );
  });

  it('on cancel, stops unstarted items and keeps finished results', async () => {
    let cancelled = 0;
    const s = standIns({
      async generateAnswer(input) {
        if (input.jobId.endsWith('-0')) {
          return { resultRef: 'r0', generatedTokens: 1, finishReason: 'stop' as const };
        }
        return waitForCancel(() => cancelled++)();
      },
    });
    s.blobs.set('manifest', manifest(6));
    const out = await withWorker(s.acts, async (taskQueue) => {
      const h = await env.client.workflow.start(batchJobWorkflow, {
        taskQueue,
        workflowId: 'batch-c',
        args: [{ batchId: 'batch-c', manifestRef: 'manifest', total: 6, concurrency: 2 }],
      });
      for (let i = 0; i < 100; i++) {
        const p = await h.query(batchProgressQuery);
        if (p.counts.completed === 1 && p.counts.running === 2) break;
        await env.sleep(200);
      }
      await h.signal(cancelBatchSignal);
      return h.result();
    });
    expect(out.status).toBe('cancelled');
    // item 0 done; items 1 and 2 running (cancelled); 3..5 never started (cancelled)
    expect(out.counts).toEqual({ total: 6, completed: 1, failed: 0, cancelled: 5 });
    expect(cancelled).toBeGreaterThanOrEqual(2);
  });
});
