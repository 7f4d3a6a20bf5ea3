// generateAnswer: one instruction through the shared engine. Tokens stream into
// heartbeats (so a dead worker is noticed and cancellation is delivered), into
// NATS progress events (with the text, for SSE) and, less often, into a signal
// to the workflow for its progress query. Cancellation aborts the engine
// request, which frees its batch slot at once.
//
// Resuming: on a retry, the last heartbeat (GenerateHeartbeat) says how far the
// previous attempt got and where. Today every resume recomputes; the preemption
// work adds `checkpointId` and restores instead (see planResume).
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { getText, putJson } from '../blobstore/store';
import type { GenerationResult } from '../engine/types';
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

export function makeGenerate(deps: ActivityDeps) {
  const { engine, blobs, events, client, host, hostTaskQueue, device } = deps;

  return async function generateAnswer(input: GenerateInput): Promise<GenerateOutput> {
    const ctx = Context.current();
    const plan = planResume(ctx.info.heartbeatDetails as GenerateHeartbeat | undefined);
    const { options } = input;
    const document = await getText(blobs, input.preparedRef);

    let tokensDone = 0;
    const beat = () =>
      ctx.heartbeat({
        index: input.index,
        tokensDone,
        host,
        taskQueue: hostTaskQueue,
        resumes: plan.resumes,
      } satisfies GenerateHeartbeat);
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

    let result: GenerationResult;
    try {
      const stream = engine.stream({
        messages: messagesFor(document, input.instruction),
        maxTokens: options.maxTokens,
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
      if (ctx.cancellationSignal.aborted) throw new CancelledFailure('generation cancelled');
      if ((err as Error).name === 'InvalidRequestError') throw badInput((err as Error).message);
      throw ApplicationFailure.retryable((err as Error).message, (err as Error).name);
    } finally {
      clearInterval(idle);
    }
    if (result.stats.finishReason === 'cancelled' || ctx.cancellationSignal.aborted) {
      throw new CancelledFailure('generation cancelled');
    }
    if (pendingText) emit(Date.now());

    const s = result.stats;
    const stats: ResultStats = {
      promptTokens: s.promptTokens,
      generatedTokens: s.generatedTokens,
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
      generatedTokens: s.generatedTokens,
      finishReason: s.finishReason,
    };
  };
}
