// documentJobWorkflow: one document, one or more instructions.
// prepare (validate, tokenize, store) -> generate per instruction (in parallel,
// sharing the engine's continuous batch) -> store results -> publish completion.
// Light steps are local activities so the worker's activity slots stay equal to
// the engine's batch capacity; generation is a regular, heartbeating activity,
// retried by workflows/generation.ts on the host that holds its checkpoint.
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  isCancellation,
  proxyLocalActivities,
  setHandler,
} from '@temporalio/workflow';
import { BAD_INPUT, type JobActivities } from './activities';
import {
  cancelJobSignal,
  cancelJobUpdate,
  jobProgressQuery,
  tokensDoneSignal,
} from './definitions';
import { generateResumable } from './generation';
import type { DocumentJobInput, DocumentJobOutput, JobProgress } from './types';

const light = proxyLocalActivities<JobActivities>({
  startToCloseTimeout: '2 minutes',
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '30s',
    maximumAttempts: 5,
    nonRetryableErrorTypes: [BAD_INPUT],
  },
});

export async function documentJobWorkflow(input: DocumentJobInput): Promise<DocumentJobOutput> {
  const { jobId } = input;
  const progress: JobProgress = {
    stage: 'queued',
    instructions: input.instructions.map(() => ({
      tokensDone: 0,
      maxTokens: input.options.maxTokens,
      done: false,
    })),
  };
  const job = new CancellationScope();
  let cancelRequested = false;
  const cancel = () => {
    cancelRequested = true;
    job.cancel();
  };
  setHandler(jobProgressQuery, () => progress);
  setHandler(cancelJobSignal, cancel);
  setHandler(cancelJobUpdate, () => {
    cancel();
    return progress;
  });
  setHandler(tokensDoneSignal, (index, tokensDone) => {
    const p = progress.instructions[index];
    if (p && !p.done) p.tokensDone = Math.max(p.tokensDone, tokensDone);
  });

  try {
    const resultRef = await job.run(async () => {
      progress.stage = 'preparing';
      const prepared = await light.prepareDocument({
        jobId,
        documentRef: input.documentRef,
        instructions: input.instructions,
        options: input.options,
        truncation: input.truncation,
      });
      progress.documentTokens = prepared.documentTokens;
      progress.truncatedTokens = prepared.truncatedTokens;
      progress.stage = 'generating';
      const answers = await Promise.all(
        input.instructions.map(async (instruction, index) => {
          const out = await generateResumable(
            {
              jobId,
              index,
              preparedRef: prepared.preparedRef,
              instruction,
              options: input.options,
            },
            input.heartbeatTimeoutMs,
          );
          const p = progress.instructions[index];
          if (p) Object.assign(p, { tokensDone: out.generatedTokens, done: true });
          return out;
        }),
      );
      progress.stage = 'storing';
      return await light.storeJobResult({ jobId, prepared, answers });
    });
    progress.resultRef = resultRef;
    progress.stage = 'publishing';
    await light.publishJobEvent({ type: 'completed', jobId, resultRef });
    progress.stage = 'completed';
    return { jobId, status: 'completed', resultRef };
  } catch (err) {
    if (isCancellation(err)) {
      progress.stage = 'cancelled';
      await CancellationScope.nonCancellable(() =>
        light.publishJobEvent({ type: 'cancelled', jobId }),
      );
      // A Temporal cancel request ends the run as Cancelled; our own signal or
      // update ends it normally with status `cancelled`.
      if (cancelRequested && !CancellationScope.current().consideredCancelled) {
        return { jobId, status: 'cancelled' };
      }
      throw err;
    }
    const failure = toFailure(err);
    progress.stage = 'failed';
    progress.error = failure.message;
    await CancellationScope.nonCancellable(() =>
      light.publishJobEvent({ type: 'failed', jobId, error: failure.message }),
    );
    throw failure;
  }
}

/** The activity's own ApplicationFailure (with its readable message), or a wrapper. */
function toFailure(err: unknown): ApplicationFailure {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  if (cause instanceof ApplicationFailure) {
    return ApplicationFailure.create({
      message: cause.message,
      type: cause.type ?? undefined,
      nonRetryable: true,
      cause: err instanceof Error ? err : undefined,
    });
  }
  const message = cause instanceof Error ? cause.message : String(cause);
  return ApplicationFailure.create({ message, nonRetryable: true });
}
