// The activity interface the workflows schedule. The worker implements it in
// activities/ (built by createActivities with the engine, blob store and NATS).
import type {
  BatchItem,
  BatchOutcome,
  GenerateInput,
  GenerateOutput,
  JobEvent,
  PrepareInput,
  PrepareOutput,
  StoreResultInput,
} from './types';

export interface JobActivities {
  /** Validates and tokenizes the document, applies truncation, stores what generation reads. */
  prepareDocument(input: PrepareInput): Promise<PrepareOutput>;
  /** Runs one instruction through the engine; heartbeats progress; cancellable. */
  generateAnswer(input: GenerateInput): Promise<GenerateOutput>;
  /** Combines per-instruction results into the job's result blob; returns its ref. */
  storeJobResult(input: StoreResultInput): Promise<string>;
  /** Publishes on `jobs.events.<id>`, deduplicated per job and event type. */
  publishJobEvent(event: JobEvent): Promise<void>;
  loadBatchItems(manifestRef: string, start: number, count: number): Promise<BatchItem[]>;
  storeBatchOutcomes(outcomes: BatchOutcome[]): Promise<string>;
}

/** Error type of bad input: never retried, message shown to the user. */
export const BAD_INPUT = 'BadInput';
