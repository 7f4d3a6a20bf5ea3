// Generation with host-affine retries. Temporal's own activity retry would
// send every attempt to the shared task queue, so the workflow retries
// generateAnswer itself (each activity has one attempt):
//   - a failed attempt's last heartbeat (from a heartbeat timeout, or attached
//     by the activity to its own retryable failure) says which host holds the
//     checkpoint and how long that host asks a retry to wait for it;
//   - the retry goes to that host's task queue with that wait as its
//     schedule-to-start timeout, so the host restores from its memory if it is
//     back in time;
//   - when the wait runs out, the retry goes to the shared queue, where any
//     host takes it and recomputes (from the document and the tokens so far).
// Each attempt gets the previous heartbeat as `input.prior`, since a new
// activity starts without heartbeat details.
import {
  ActivityCancellationType,
  ActivityFailure,
  type ActivityOptions,
  ApplicationFailure,
  isCancellation,
  log,
  proxyActivities,
  sleep,
  TimeoutFailure,
} from '@temporalio/workflow';
import { BAD_INPUT, type JobActivities } from './activities';
import type { GenerateHeartbeat, GenerateInput, GenerateOutput } from './types';

/** Attempts of one instruction's generation, as Temporal's retry policy had them. */
export const GENERATION_ATTEMPTS = 5;
const FIRST_BACKOFF_MS = 2_000;
const MAX_BACKOFF_MS = 60_000;

function options(heartbeatTimeoutMs: number): ActivityOptions {
  return {
    // Generation of thousands of tokens on a busy batch can be slow; the heartbeat
    // timeout, not this one, is what detects a dead worker.
    startToCloseTimeout: '2 hours',
    // Waiting for a free batch slot is normal under load.
    scheduleToStartTimeout: '24 hours',
    heartbeatTimeout: heartbeatTimeoutMs,
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    // Retries are this file's loop, so each can pick its task queue.
    retry: { maximumAttempts: 1 },
  };
}

/** The heartbeat an attempt's failure carries, if any. */
export function heartbeatOf(err: unknown): GenerateHeartbeat | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  const details =
    cause instanceof TimeoutFailure
      ? cause.lastHeartbeatDetails
      : cause instanceof ApplicationFailure
        ? cause.details?.[0]
        : undefined;
  const hb = details as GenerateHeartbeat | undefined;
  return hb && typeof hb === 'object' && typeof hb.tokensDone === 'number' ? hb : undefined;
}

function retryable(err: unknown): boolean {
  if (isCancellation(err)) return false;
  const cause = err instanceof ActivityFailure ? err.cause : err;
  if (cause instanceof ApplicationFailure) return !cause.nonRetryable && cause.type !== BAD_INPUT;
  return true;
}

function hostWaitExpired(err: unknown): boolean {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof TimeoutFailure && cause.timeoutType === 'SCHEDULE_TO_START';
}

/** Runs one instruction's generation, retrying on the host that holds its checkpoint. */
export async function generateResumable(
  input: GenerateInput,
  heartbeatTimeoutMs = 60_000,
): Promise<GenerateOutput> {
  const shared = proxyActivities<JobActivities>(options(heartbeatTimeoutMs));
  let prior: GenerateHeartbeat | undefined;
  for (let attempt = 1; ; attempt++) {
    try {
      const wait = prior?.checkpointId ? (prior.hostWaitMs ?? 0) : 0;
      if (prior && wait > 0) {
        const onHost = proxyActivities<JobActivities>({
          ...options(heartbeatTimeoutMs),
          taskQueue: prior.taskQueue,
          scheduleToStartTimeout: wait,
        });
        try {
          return await onHost.generateAnswer({ ...input, prior });
        } catch (err) {
          if (!hostWaitExpired(err)) throw err;
          log.info('checkpoint host did not come back in time; any host recomputes', {
            host: prior.host,
            waitMs: wait,
          });
        }
      }
      return await shared.generateAnswer({ ...input, prior });
    } catch (err) {
      if (!retryable(err) || attempt >= GENERATION_ATTEMPTS) throw err;
      prior = heartbeatOf(err) ?? prior;
      await sleep(Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (attempt - 1)));
    }
  }
}
