// generateAnswer: one instruction through the shared engine. Tokens stream into
// heartbeats (so a dead worker is noticed and cancellation is delivered), into
// NATS progress events (with the text, for SSE) and, less often, into a signal
// to the workflow for its progress query. Cancellation aborts the engine
// request, which frees its batch slot at once.
//
// Resuming: on a retry, the last heartbeat (GenerateHeartbeat) says how far the
// previous attempt got and where. With a checkpoint store (deps.checkpoints) the
// engine checkpoints the request into host memory and the heartbeat carries
// its `checkpointId`; a retry restores from it when it is present and valid,
// and otherwise recomputes (checkpoint/resume.ts). Without one, see planResume.
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { getText, putJson } from '../blobstore/store';
import { planCheckpointResume, type Resume } from '../checkpoint/resume';
import { CheckpointStore } from '../checkpoint/store';
import type { CheckpointEvent, GenerationResult } from '../engine/types';
import { tokensDoneSignal } from '../workflows/definitions';
import type {
  GenerateHeartbeat,
  GenerateInput,
  GenerateOutput,
  InstructionResult,
  ResultStats,
} from '../workflows/types';
import type { ActivityDeps } from './deps';
import { badInput } from './prepare';
import { messagesFor } from './prompt';

/** Heartbeat even while the prompt is prefilling and no token has come yet. */
const IDLE_HEARTBEAT_MS = 5_000;
/** Progress signals grow workflow history: send them far less often than events. */
const SIGNAL_EVERY_MS = 3_000;

export interface ResumePlan {
  resumes: number;
  resumedFrom?: 'checkpoint' | 'recompute';
  tokensRecomputed: number;
}

/** How this attempt continues from the previous one's last heartbeat. */
export function planResume(prior: GenerateHeartbeat | undefined): ResumePlan {
  if (!prior) return { resumes: 0, tokensRecomputed: 0 };
  return {
    resumes: prior.resumes + 1,
    resumedFrom: 'recompute',
    tokensRecomputed: prior.tokensDone,
  };
}

/**
 * The error for an aborted generation: a cancellation when the job was
 * cancelled, but a retryable failure when the worker is shutting down, so
 * Temporal hands the work to another worker (with this attempt's heartbeat).
 */
function stopped(ctx: Context): Error {
  const reason = (ctx.cancellationSignal.reason as Error | undefined)?.message;
  if (reason === 'WORKER_SHUTDOWN') {
    return ApplicationFailure.retryable(
      'worker shut down during generation; handed back',
      'WorkerShutdown',
    );
  }
  return new CancelledFailure('generation cancelled');
}

export function makeGenerate(deps: ActivityDeps) {
  const { engine, blobs, events, client, host, hostTaskQueue, device } = deps;

  return async function generateAnswer(input: GenerateInput): Promise<GenerateOutput> {
    const ctx = Context.current();
    const prior = ctx.info.heartbeatDetails as GenerateHeartbeat | undefined;
    const { options } = input;
    const document = await getText(blobs, input.preparedRef);
    const messages = messagesFor(document, input.instruction);
    let resume: Resume | undefined;
    if (deps.checkpoints) {
      try {
        const id = CheckpointStore.idFor(input.jobId, input.index);
        const prompt = engine.applyChatTemplate(messages);
        resume = planCheckpointResume(
          deps.checkpoints,
          engine,
          id,
          prompt,
          options.maxTokens,
          prior,
          ctx.log,
        );
      } catch (err) {
        if ((err as Error).name === 'InvalidRequestError') throw badInput((err as Error).message);
        throw err;
      }
    }
    const plan = resume?.plan ?? planResume(prior);
    const resumed = resume?.generated ?? [];
    // Set once a checkpoint of this request exists (restored, or written by this attempt).
    let checkpointId = resume?.plan.resumedFrom === 'checkpoint' ? resume.id : undefined;

    let tokensDone = resumed.length;
    const beat = () =>
      ctx.heartbeat({
        index: input.index,
        tokensDone,
        host,
        taskQueue: hostTaskQueue,
        resumes: plan.resumes,
        checkpointId,
      } satisfies GenerateHeartbeat);
    const onCheckpoint = (e: CheckpointEvent) => {
      if (!e.ok) {
        ctx.log.warn('checkpoint write failed', { reason: e.message });
        return;
      }
      checkpointId = resume?.id;
      beat();
      deps.checkpoints?.store.enforce();
    };
    beat();
    const idle = setInterval(beat, IDLE_HEARTBEAT_MS);

    let pendingText = '';
    let lastEvent = Date.now();
    let lastSignal = Date.now();
    const job = client.workflow.getHandle(input.jobId);
    const emit = (now: number) => {
      events.progress({
        type: 'progress',
        jobId: input.jobId,
        index: input.index,
        tokensDone,
        text: pendingText,
      });
      pendingText = '';
      lastEvent = now;
      if (now - lastSignal >= SIGNAL_EVERY_MS) {
        lastSignal = now;
        // Best effort: progress must never fail generation.
        job.signal(tokensDoneSignal, input.index, tokensDone).catch(() => {});
      }
    };

    // A cancelled job's checkpoint is of no further use; a handed-back one is.
    const stoppedHere = () => {
      const e = stopped(ctx);
      if (resume && e instanceof CancelledFailure) deps.checkpoints?.store.remove(resume.id);
      return e;
    };
    let result: GenerationResult;
    if (resume) deps.checkpoints?.store.acquire(resume.id);
    try {
      const stream = engine.stream({
        ...(resume
          ? resume.request(options.maxTokens, onCheckpoint)
          : { messages, maxTokens: options.maxTokens }),
        temperature: options.temperature,
        topP: options.topP,
        topK: options.topK,
        seed: options.seed,
        budget: options.budget,
        signal: ctx.cancellationSignal,
      });
      for await (const chunk of stream) {
        tokensDone += 1;
        pendingText += chunk.text;
        beat();
        const now = Date.now();
        if (now - lastEvent >= deps.progressIntervalMs) emit(now);
      }
      result = await stream.result;
    } catch (err) {
      if (ctx.cancellationSignal.aborted) throw stoppedHere();
      if ((err as Error).name === 'InvalidRequestError') throw badInput((err as Error).message);
      throw ApplicationFailure.retryable((err as Error).message, (err as Error).name);
    } finally {
      clearInterval(idle);
      if (resume) deps.checkpoints?.store.release(resume.id);
    }
    if (result.stats.finishReason === 'cancelled' || ctx.cancellationSignal.aborted) {
      throw stoppedHere();
    }
    if (pendingText) emit(Date.now());

    const s = result.stats;
    if (resume && plan.resumedFrom === 'checkpoint' && s.restoreError) {
      // The engine refused the file it was given (it re-validates): it prefilled instead.
      ctx.log.warn('checkpoint rejected by the engine, recomputed', { reason: s.restoreError });
      Object.assign(plan, { resumedFrom: 'recompute', tokensRecomputed: prior?.tokensDone ?? 0 });
    }
    if (resumed.length > 0) {
      result = {
        ...result,
        text: engine.detokenize([...resumed, ...result.tokens]),
        tokens: [...resumed, ...result.tokens],
      };
    }
    if (resume) deps.checkpoints?.store.remove(resume.id);
    const generatedTokens = resumed.length + s.generatedTokens;
    const stats: ResultStats = {
      promptTokens: resume ? resume.prompt.length : s.promptTokens,
      generatedTokens,
      prefillMs: s.prefillMs,
      decodeMs: s.decodeMs,
      prefillTokensPerS: s.prefillTokensPerS,
      decodeTokensPerS: s.decodeTokensPerS,
      finishReason: s.finishReason,
      attention: options.budget ? 'sparse' : 'full',
      budget: options.budget,
      host,
      device,
      ...plan,
    };
    const answer: InstructionResult = { instruction: input.instruction, text: result.text, stats };
    return {
      resultRef: await putJson(blobs, answer),
      generatedTokens,
      finishReason: s.finishReason,
    };
  };
}
