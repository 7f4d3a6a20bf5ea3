// The workflow's own generation retries (workflows/generation.ts) on
// Temporal's time-skipping test server (the real server binary from the venv).
// The activities are STAND-INS that fail on purpose, recording on which task
// queue each attempt ran and which previous heartbeat it was given. The real
// thing, with real workers killed, is in preempt-affinity.test.ts.
import path from 'node:path';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../config/root';
import { workflowBundle } from '../worker/worker';
import { documentJobWorkflow } from '../workflows';
import { BAD_INPUT, type JobActivities } from '../workflows/activities';
import { GENERATION_ATTEMPTS } from '../workflows/generation';
import type { GenerateHeartbeat, GenerateInput, GenerateOutput } from '../workflows/types';

const TEST_SERVER = path.join(projectRoot, '.venv', 'bin', 'temporal-test-server');
let env: TestWorkflowEnvironment;
let queueNo = 0;

beforeAll(async () => {
  // The failures these tests provoke on purpose would otherwise flood the log.
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: TEST_SERVER } },
  });
});
afterAll(async () => {
  await env?.teardown();
});

interface Call {
  queue: string;
  prior?: GenerateHeartbeat;
}

type Generate = (input: GenerateInput, call: number) => Promise<GenerateOutput>;

const ok: GenerateOutput = { resultRef: 'r', generatedTokens: 5, finishReason: 'stop' };

/** A heartbeat of host `queue` holding a checkpoint (or not). */
const beat = (
  queue: string,
  tokensDone: number,
  checkpointId?: string,
  hostWaitMs = 60_000,
): GenerateHeartbeat => ({
  index: 0,
  tokensDone,
  host: 'h',
  taskQueue: queue,
  resumes: 0,
  checkpointId,
  hostWaitMs,
});

/**
 * Runs one job with workers on the shared queue and on a host queue (if
 * `hostUp`); `generate` scripts each attempt. Returns the calls and the outcome.
 */
async function run(generate: Generate, hostUp: boolean) {
  const shared = `route-${process.pid}-${queueNo++}`;
  const hostQueue = `${shared}-host-h`;
  const calls: Call[] = [];
  const acts = (): JobActivities => ({
    async prepareDocument() {
      return { preparedRef: 'doc', documentTokens: 10, truncatedTokens: 0 };
    },
    async generateAnswer(input) {
      calls.push({ queue: Context.current().info.taskQueue, prior: input.prior });
      return generate(input, calls.length);
    },
    async storeJobResult() {
      return 'job-result';
    },
    async publishJobEvent() {},
    async loadBatchItems() {
      return [];
    },
    async storeBatchOutcomes() {
      return 'seg';
    },
  });
  const workers = [
    await Worker.create({
      connection: env.nativeConnection,
      taskQueue: shared,
      workflowBundle: await workflowBundle(),
      activities: acts(),
    }),
  ];
  if (hostUp) {
    workers.push(
      await Worker.create({
        connection: env.nativeConnection,
        taskQueue: hostQueue,
        activities: acts(),
      }),
    );
  }
  const job = () =>
    env.client.workflow.execute(documentJobWorkflow, {
      taskQueue: shared,
      workflowId: shared,
      args: [
        {
          jobId: shared,
          documentRef: 'doc',
          instructions: ['q'],
          options: { maxTokens: 8, temperature: 0, seed: 0 },
          truncation: 'reject',
        },
      ],
    });
  const outcome = await runAll(workers, job);
  return { calls, outcome, shared, hostQueue };
}

async function runAll<T>(workers: Worker[], fn: () => Promise<T>): Promise<T | Error> {
  const [first, ...rest] = workers;
  const inner = rest.reduce<() => Promise<T | Error>>(
    (f, w) => () => w.runUntil(f),
    () => fn().catch((e: Error) => e),
  );
  return (first as Worker).runUntil(inner);
}

/** An attempt that dies as a preempted worker's does: retryable, with its heartbeat. */
const preempted = (hb: GenerateHeartbeat) =>
  ApplicationFailure.retryable('worker shut down', 'WorkerShutdown', hb);

describe('generation retries chosen by the workflow (stand-in activities)', () => {
  it('retries on the host queue that holds the checkpoint, handing over the heartbeat', async () => {
    const { calls, outcome, shared, hostQueue } = await run(async (input, n) => {
      if (n === 1) throw preempted(beat(`${input.jobId}-host-h`, 9, 'ck-1'));
      return ok;
    }, true);
    expect(outcome).toMatchObject({ status: 'completed' });
    expect(calls.map((c) => c.queue)).toEqual([shared, hostQueue]);
    expect(calls[0]?.prior).toBeUndefined();
    expect(calls[1]?.prior).toMatchObject({ tokensDone: 9, checkpointId: 'ck-1' });
  });

  it('without a checkpoint there is no host to prefer: the retry stays on the shared queue', async () => {
    const { calls, outcome, shared } = await run(async (input, n) => {
      if (n === 1) throw preempted(beat(`${input.jobId}-host-h`, 3));
      return ok;
    }, true);
    expect(outcome).toMatchObject({ status: 'completed' });
    expect(calls.map((c) => c.queue)).toEqual([shared, shared]);
    expect(calls[1]?.prior?.tokensDone).toBe(3);
  });

  it('the host not back within its wait: the retry goes to the shared queue', async () => {
    const { calls, outcome, shared, hostQueue } = await run(async (input, n) => {
      // The test server does not skip time while an activity waits: a short wait.
      if (n === 1) throw preempted(beat(`${input.jobId}-host-h`, 9, 'ck-1', 2_000));
      return ok;
    }, false);
    expect(outcome).toMatchObject({ status: 'completed' });
    // Nobody polls the host queue: its attempt never starts, the shared one does.
    expect(calls.map((c) => c.queue)).toEqual([shared, shared]);
    expect(calls[1]?.prior).toMatchObject({ tokensDone: 9, checkpointId: 'ck-1' });
    expect(hostQueue).not.toBe(shared);
  }, 60_000);

  it('stops after GENERATION_ATTEMPTS attempts, and at once on bad input', async () => {
    const always = await run(async () => {
      throw ApplicationFailure.retryable('engine hiccup', 'GenerationError');
    }, false);
    expect(always.outcome).toBeInstanceOf(WorkflowFailedError);
    expect(always.calls.length).toBe(GENERATION_ATTEMPTS);

    const bad = await run(async (input, n) => {
      if (n === 1) throw preempted(beat(`${input.jobId}-host-h`, 4, 'ck'));
      throw ApplicationFailure.nonRetryable('prompt too long', BAD_INPUT);
    }, true);
    expect(bad.outcome).toBeInstanceOf(WorkflowFailedError);
    expect(bad.calls.map((c) => c.queue)).toEqual([bad.shared, bad.hostQueue]);
  });
});
