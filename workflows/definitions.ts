// Signals, queries and updates of the job workflows, defined once so the
// workflows, the API and the activities refer to the same names and types.
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { BatchProgress, JobProgress } from './types';

export const jobProgressQuery = defineQuery<JobProgress>('jobProgress');
/** Cancels the job; the workflow ends with status `cancelled`. */
export const cancelJobSignal = defineSignal<[reason?: string]>('cancelJob');
/** Same as the signal, but answers with the progress at the time of the request. */
export const cancelJobUpdate = defineUpdate<JobProgress, [reason: string]>('cancelJobUpdate');
/** Sent by generateAnswer, throttled, so the progress query can report tokens done. */
export const tokensDoneSignal = defineSignal<[index: number, tokensDone: number]>('tokensDone');

export const batchProgressQuery = defineQuery<BatchProgress>('batchProgress');
export const cancelBatchSignal = defineSignal<[reason?: string]>('cancelBatch');
