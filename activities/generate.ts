// generateAnswer: one instruction through the shared engine. Tokens stream into
// heartbeats (so a dead worker is noticed and cancellation is delivered), into
// NATS progress events (with the text, for SSE) and, less often, into a signal
// to the workflow for its progress query. Cancellation aborts the engine
// request, which frees its batch slot at once.
//
// Resuming: on a retry, the last heartbeat (GenerateHeartbeat: from Temporal,
// or from the workflow as `input.prior`) says how far the previous attempt got,
// on which host, and which tokens it generated. With a checkpoint store
// (deps.checkpoints) the engine checkpoints the request into host memory and
// the heartbeat carries its `checkpointId`; a retry restores from it when it is
// present and valid, and otherwise re-prefills the document and the tokens so
// far (checkpoint/resume.ts).
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { getText, putJson } from '../blobstore/store';
import { planResume, type Resume } from '../checkpoint/resume';
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
import { decodeTokens, encodeTokens } from './heartbeat';
import { badInput } from './prepare';
import { messagesFor } from './prompt';

/** Heartbeat even while the prompt is prefilling and no token has come yet. */
const IDLE_HEARTBEAT_MS = 5_000;
/** Progress signals grow workflow history: send them far less often than events. */
const SIGNAL_EVERY_MS = 3_000;

/** Heartbeats between tokens go out at most this often (each carries the tokens so far). */
const BEAT_EVERY_MS = 200;

/**
 * The error for an aborted generation: a cancellation when the job was
 * cancelled, but a retryable failure when the worker is shutting down, so
 * Temporal hands the work to another worker (with this attempt's heartbeat).
 */
function stopped(ctx: Context, heartbeat: GenerateHeartbeat): Error {
  const reason = (ctx.cancellationSignal.reason as Error | undefined)?.message;
  if (reason === 'WORKER_SHUTDOWN') {
    return ApplicationFailure.retryable(
      'worker shut down during generation; handed back',
      'WorkerShutdown',
      heartbeat,
    );
  }
  return new CancelledFailure('generation cancelled');
}

export function makeGenerate(deps: ActivityDeps) {
  const { engine, blobs, events, client, host, hostTaskQueue, device } = deps;

  return async function generateAnswer(input: GenerateInput): Promise<GenerateOutput> {
    const ctx = Context.current();
    const prior = (ctx.info.heartbeatDetails as GenerateHeartbeat | undefined) ?? input.prior;
    const { options } = input;
    const document = await getText(blobs, input.preparedRef);
    const messages = messagesFor(document, input.instruction);
    const id = CheckpointStore.idFor(input.jobId, input.index);
    let resume: Resume;
    try {
      resume = await planResume(
        deps.checkpoints,
        engine,
        id,
        engine.applyChatTemplate(messages),
        options.maxTokens,
        prior && { ...prior, tokens: decodeTokens(prior.tokens) },
        ctx.log,
        !options.budget,
      );
    } catch (err) {
      if ((err as Error).name === 'InvalidRequestError') throw badInput((err as Error).message);
      throw err;
    }
    const { plan, generated: resumed } = resume;
    // Set once a checkpoint of this request exists (restored, or written by this attempt).
    let checkpointId = resume.restore ? id : undefined;

    // Every token of this generation so far, for heartbeats (a retry re-prefills them).
    const tokens = [...resumed];
    let tokensDone = resumed.length;
    const heartbeat = (): GenerateHeartbeat => ({
      index: input.index,
      tokensDone,
      host,
      taskQueue: hostTaskQueue,
      resumes: plan.resumes,
      checkpointId,
      tokens: encodeTokens(tokens, deps.heartbeatMaxTokens ?? Number.MAX_SAFE_INTEGER),
      hostWaitMs: deps.hostWaitMs ?? 0,
    });
    let lastBeat = 0;
    const beat = (force = true) => {
      const now = Date.now();
      if (!force && now - lastBeat < BEAT_EVERY_MS) return;
      lastBeat = now;
      ctx.heartbeat(heartbeat());
    };
    const onCheckpoint = (e: CheckpointEvent) => {
      if (!e.ok) {
        ctx.log.warn('checkpoint write failed', { reason: e.message });
        return;
      }
      checkpointId = id;
      beat();
      deps.checkpoints?.store.enforce();
      deps.checkpoints?.mirror?.written(id, e.path, e.bytes, e.fileBytes);
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
    const removeCheckpoint = () => {
      deps.checkpoints?.store.remove(id);
      deps.checkpoints?.mirror?.remove(id);
    };
    const stoppedHere = () => {
      const e = stopped(ctx, heartbeat());
      if (e instanceof CancelledFailure) removeCheckpoint();
      return e;
    };
    let result: GenerationResult;
    deps.checkpoints?.store.acquire(id);
    try {
      const stream = engine.stream({
        ...resume.request(options.maxTokens, onCheckpoint),
        temperature: options.temperature,
        topP: options.topP,
        topK: options.topK,
        seed: options.seed,
        budget: options.budget,
        signal: ctx.cancellationSignal,
      });
      for await (const chunk of stream) {
        tokensDone += 1;
        tokens.push(chunk.token);
        pendingText += chunk.text;
        beat(false);
        const now = Date.now();
        if (now - lastEvent >= deps.progressIntervalMs) emit(now);
      }
      beat(); // the last tokens, which the throttle may have held back
      result = await stream.result;
    } catch (err) {
      if (ctx.cancellationSignal.aborted) throw stoppedHere();
      if ((err as Error).name === 'InvalidRequestError') throw badInput((err as Error).message);
      throw ApplicationFailure.retryable((err as Error).message, (err as Error).name, heartbeat());
    } finally {
      clearInterval(idle);
      deps.checkpoints?.store.release(id);
    }
    if (result.stats.finishReason === 'cancelled' || ctx.cancellationSignal.aborted) {
      throw stoppedHere();
    }
    if (pendingText) emit(Date.now());

    const s = result.stats;
    if (resume.restore && s.restoreError) {
      // The engine refused the file it was given (it re-validates): it re-prefilled
      // the prompt and the tokens so far instead.
      ctx.log.warn('checkpoint rejected by the engine, recomputed', { reason: s.restoreError });
      Object.assign(plan, {
        resumedFrom: 'recompute',
        tokensRecomputed: prior?.tokensDone ?? 0,
        tokensReprefilled: resumed.length,
      });
    }
    if (resumed.length > 0) {
      result = {
        ...result,
        text: engine.detokenize([...resumed, ...result.tokens]),
        tokens: [...resumed, ...result.tokens],
      };
    }
    removeCheckpoint();
    const generatedTokens = resumed.length + s.generatedTokens;
    const stats: ResultStats = {
      promptTokens: resume.prompt.length,
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
