// JobService: what every way in (HTTP, NATS, CLI) does with a job. Stores the
// document in the blob store, starts the workflow with an id derived from the
// idempotency key (so a repeat is the same job), reads status and results back
// from Temporal and the blob store, and cancels.

import { createHash, randomUUID } from 'node:crypto';
import type { Client, WorkflowHandle } from '@temporalio/client';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  WorkflowNotFoundError,
} from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { type BlobStore, getJson } from '../blobstore/store';
import {
  batchJobWorkflow,
  batchProgressQuery,
  cancelBatchSignal,
  cancelJobSignal,
  documentJobWorkflow,
  jobProgressQuery,
} from '../workflows';
import type {
  BatchItem,
  BatchJobOutput,
  BatchOutcome,
  BatchProgress,
  DocumentJobInput,
  DocumentJobOutput,
  GenerateHeartbeat,
  GenerationOptions,
  JobProgress,
  JobResult,
} from '../workflows/types';
import type { JobRequest } from './schemas';
import type { DocumentSizer } from './sizer';

/** A request the service refuses; `status` is the HTTP status to answer with. */
export class JobRejected extends Error {
  override name = 'JobRejected';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface JobServiceDeps {
  client: Client;
  blobs: BlobStore;
  taskQueue: string;
  sizer?: DocumentSizer;
  batchConcurrency: number;
}

export interface JobView {
  id: string;
  status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';
  progress: JobProgress;
  results?: JobResult['results'];
  error?: string;
  batchId?: string;
}

export interface BatchView {
  id: string;
  status: 'running' | 'completed' | 'cancelled' | 'failed';
  request_counts: {
    total: number;
    completed: number;
    failed: number;
    cancelled: number;
    running: number;
  };
  error?: string;
}

/** Queries need a worker; when none answers soon, the API says what it knows. */
const QUERY_DEADLINE_MS = 3_000;

export function jobIdForKey(key: string): string {
  return `job-${createHash('sha256').update(key).digest('hex').slice(0, 32)}`;
}

export function generationOptions(o: JobRequest['options']): GenerationOptions {
  const { full, budget, ...rest } = o;
  return { ...rest, ...(full || budget === undefined ? {} : { budget }) };
}

export class JobService {
  constructor(private readonly d: JobServiceDeps) {}

  /** Validates the size, stores the document, starts (or finds) the job. */
  async submit(req: JobRequest, explicitId?: string): Promise<{ id: string; created: boolean }> {
    const id =
      explicitId ?? (req.idempotencyKey ? jobIdForKey(req.idempotencyKey) : `job-${randomUUID()}`);
    const options = generationOptions(req.options);
    const problem = this.d.sizer?.problem(req.document, req.instructions, options, req.truncation);
    if (problem) throw new JobRejected(413, problem);
    const input: DocumentJobInput = {
      jobId: id,
      documentRef: await this.d.blobs.put(req.document),
      instructions: req.instructions,
      options,
      truncation: req.truncation,
    };
    try {
      await this.d.client.workflow.start(documentJobWorkflow, {
        taskQueue: this.d.taskQueue,
        workflowId: id,
        args: [input],
        // A repeated key never runs the job again, whether it is running or done:
        // both cases raise WorkflowExecutionAlreadyStartedError.
        workflowIdReusePolicy: 'REJECT_DUPLICATE',
      });
      return { id, created: true };
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) return { id, created: false };
      throw err;
    }
  }

  async get(id: string): Promise<JobView | undefined> {
    const handle = this.d.client.workflow.getHandle<typeof documentJobWorkflow>(id);
    const desc = await describe(handle);
    if (!desc) return undefined;
    if (desc.type !== 'documentJobWorkflow') return undefined;
    const batchId = desc.memo?.batchId as string | undefined;
    const base = { id, ...(batchId ? { batchId } : {}) };
    switch (desc.status.name) {
      case 'RUNNING': {
        const progress = await this.liveProgress(handle, desc.raw);
        const started = desc.raw.pendingActivities?.some(
          (a) => String(a.state) === 'PENDING_ACTIVITY_STATE_STARTED' || a.state === 2,
        );
        // Queued until the engine takes the job: waiting to be prepared, or for a batch slot.
        const waiting =
          progress.stage === 'queued' ||
          progress.stage === 'preparing' ||
          (progress.stage === 'generating' && !started);
        return { ...base, status: waiting ? 'queued' : 'running', progress };
      }
      case 'COMPLETED': {
        const out = (await handle.result()) as DocumentJobOutput;
        if (out.status === 'cancelled' || !out.resultRef) {
          return {
            ...base,
            status: 'cancelled',
            progress: { stage: 'cancelled', instructions: [] },
          };
        }
        const job = await getJson<JobResult>(this.d.blobs, out.resultRef);
        return {
          ...base,
          status: 'completed',
          progress: {
            stage: 'completed',
            instructions: job.results.map((r) => ({
              tokensDone: r.stats.generatedTokens,
              maxTokens: r.stats.generatedTokens,
              done: true,
            })),
            documentTokens: job.documentTokens,
            truncatedTokens: job.truncatedTokens,
            resultRef: out.resultRef,
          },
          results: job.results,
        };
      }
      case 'CANCELLED':
        return { ...base, status: 'cancelled', progress: { stage: 'cancelled', instructions: [] } };
      default: {
        const error = await failureOf(handle, desc.status.name);
        return {
          ...base,
          status: 'failed',
          progress: { stage: 'failed', instructions: [], error },
          error,
        };
      }
    }
  }

  /** Asks the job to stop; a job already finished is left as it is. */
  async cancel(id: string): Promise<JobView | undefined> {
    const handle = this.d.client.workflow.getHandle(id);
    try {
      await handle.signal(cancelJobSignal, 'cancelled by request');
    } catch (err) {
      if (!(err instanceof WorkflowNotFoundError)) throw err;
    }
    return this.get(id);
  }

  /** The workflow's progress query, with live token counts from heartbeats merged in. */
  private async liveProgress(
    handle: WorkflowHandle<typeof documentJobWorkflow>,
    raw: Awaited<ReturnType<WorkflowHandle['describe']>>['raw'],
  ): Promise<JobProgress> {
    let progress: JobProgress;
    try {
      progress = await this.d.client.connection.withDeadline(Date.now() + QUERY_DEADLINE_MS, () =>
        handle.query(jobProgressQuery),
      );
    } catch {
      return { stage: 'queued', instructions: [] };
    }
    for (const a of raw.pendingActivities ?? []) {
      const payload = a.heartbeatDetails?.payloads?.[0];
      if (!payload) continue;
      const hb = defaultPayloadConverter.fromPayload<GenerateHeartbeat>(payload);
      const p = progress.instructions[hb.index];
      if (p && !p.done) p.tokensDone = Math.max(p.tokensDone, hb.tokensDone);
    }
    return progress;
  }

  // ---- batches ----

  /**
   * Parses a JSONL batch (one job per line with a custom_id). A line that is not
   * a valid job is kept as a failed item with its reason: it fails alone.
   */
  async submitBatch(
    lines: { customId: string; job?: JobRequest; error?: string }[],
  ): Promise<{ id: string; total: number; invalid: number }> {
    if (!lines.length) throw new JobRejected(400, 'batch has no lines');
    const seen = new Set<string>();
    for (const l of lines) {
      if (seen.has(l.customId))
        throw new JobRejected(400, `custom_id ${JSON.stringify(l.customId)} appears twice`);
      seen.add(l.customId);
    }
    const items: BatchItem[] = [];
    for (const l of lines) {
      if (!l.job) {
        items.push({ customId: l.customId, error: l.error ?? 'invalid line' });
        continue;
      }
      const options = generationOptions(l.job.options);
      const problem = this.d.sizer?.problem(
        l.job.document,
        l.job.instructions,
        options,
        l.job.truncation,
      );
      if (problem) {
        items.push({ customId: l.customId, error: problem });
        continue;
      }
      items.push({
        customId: l.customId,
        job: {
          documentRef: await this.d.blobs.put(l.job.document),
          instructions: l.job.instructions,
          options,
          truncation: l.job.truncation,
        },
      });
    }
    const manifestRef = await this.d.blobs.put(JSON.stringify(items));
    const id = `batch-${randomUUID()}`;
    await this.d.client.workflow.start(batchJobWorkflow, {
      taskQueue: this.d.taskQueue,
      workflowId: id,
      args: [
        { batchId: id, manifestRef, total: items.length, concurrency: this.d.batchConcurrency },
      ],
      memo: { manifestRef, total: items.length },
    });
    return { id, total: items.length, invalid: items.filter((i) => !i.job).length };
  }

  async getBatch(id: string): Promise<BatchView | undefined> {
    const state = await this.batchState(id);
    if (!state) return undefined;
    const { counts, status, error } = state;
    return {
      id,
      status,
      request_counts: { ...counts, running: 'running' in counts ? (counts.running as number) : 0 },
      ...(error ? { error } : {}),
    };
  }

  async cancelBatch(id: string): Promise<BatchView | undefined> {
    try {
      await this.d.client.workflow.getHandle(id).signal(cancelBatchSignal, 'cancelled by request');
    } catch (err) {
      if (!(err instanceof WorkflowNotFoundError)) throw err;
    }
    return this.getBatch(id);
  }

  /**
   * One JSONL line per finished item, in input order, keyed by custom_id. Items
   * a cancelled batch never started get a `cancelled` line.
   */
  async *batchResults(id: string): AsyncGenerator<string> {
    const state = await this.batchState(id);
    if (!state) throw new JobRejected(404, `no batch ${id}`);
    const outcomes: BatchOutcome[] = [...state.pending];
    for (const ref of state.segments)
      outcomes.push(...(await getJson<BatchOutcome[]>(this.d.blobs, ref)));
    outcomes.sort((a, b) => a.index - b.index);
    const byIndex = new Map(outcomes.map((o) => [o.index, o]));
    const closed = state.status !== 'running';
    const items = closed ? await getJson<BatchItem[]>(this.d.blobs, state.manifestRef) : [];
    const total = closed ? items.length : 0;
    const indices = closed ? [...Array(total).keys()] : outcomes.map((o) => o.index);
    for (const index of indices) {
      const o = byIndex.get(index) ?? {
        index,
        customId: items[index]?.customId ?? String(index),
        status: 'cancelled' as const,
      };
      const line: Record<string, unknown> = {
        custom_id: o.customId,
        id: o.jobId ?? null,
        status: o.status,
      };
      if (o.resultRef) line.results = (await getJson<JobResult>(this.d.blobs, o.resultRef)).results;
      if (o.error) line.error = o.error;
      yield JSON.stringify(line);
    }
  }

  private async batchState(id: string): Promise<
    | {
        status: BatchView['status'];
        counts: BatchView['request_counts'] | BatchJobOutput['counts'];
        segments: string[];
        pending: BatchOutcome[];
        manifestRef: string;
        error?: string;
      }
    | undefined
  > {
    const handle = this.d.client.workflow.getHandle<typeof batchJobWorkflow>(id);
    const desc = await describe(handle);
    if (!desc || desc.type !== 'batchJobWorkflow') return undefined;
    const manifestRef = desc.memo?.manifestRef as string;
    const total = (desc.memo?.total as number) ?? 0;
    const empty = { total, completed: 0, failed: 0, cancelled: 0, running: 0 };
    switch (desc.status.name) {
      case 'RUNNING': {
        let p: BatchProgress;
        try {
          p = await this.d.client.connection.withDeadline(Date.now() + QUERY_DEADLINE_MS, () =>
            handle.query(batchProgressQuery),
          );
        } catch {
          p = { status: 'running', counts: empty, segments: [], pending: [] };
        }
        return {
          status: 'running',
          counts: p.counts,
          segments: p.segments,
          pending: p.pending,
          manifestRef,
        };
      }
      case 'COMPLETED': {
        const out = await handle.result();
        return {
          status: out.status,
          counts: out.counts,
          segments: out.segments,
          pending: [],
          manifestRef,
        };
      }
      default: {
        const error = await failureOf(handle, desc.status.name);
        return { status: 'failed', counts: empty, segments: [], pending: [], manifestRef, error };
      }
    }
  }
}

async function describe(handle: WorkflowHandle) {
  try {
    return await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}

/** The readable reason a closed workflow failed: its innermost failure's message. */
async function failureOf(handle: WorkflowHandle, statusName: string): Promise<string> {
  try {
    await handle.result();
    return statusName.toLowerCase();
  } catch (err) {
    let e: unknown = err instanceof WorkflowFailedError ? err.cause : err;
    while (e instanceof Error && e.cause instanceof Error) e = e.cause;
    return e instanceof Error ? e.message : statusName.toLowerCase();
  }
}
