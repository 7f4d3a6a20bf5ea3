// Shapes that cross the Temporal boundary: workflow inputs and outputs, the
// progress they report, and the activity contracts. Plain types only, so the
// workflow sandbox can import them. Documents and results never appear here,
// only blob references (`sha256:<hex>`), which keep history small.
import type { GenerationStats } from '../engine/types';

export type Truncation = 'reject' | 'keep_start' | 'keep_end';

export interface GenerationOptions {
  maxTokens: number;
  temperature: number;
  topP?: number;
  topK?: number;
  seed: number;
  /** Sparse KV budget; absent: full attention. */
  budget?: number;
}

export interface DocumentJobInput {
  jobId: string;
  documentRef: string;
  instructions: string[];
  options: GenerationOptions;
  truncation: Truncation;
  /** Set when the job is a batch item. */
  batchId?: string;
  /**
   * How long generation may go without a heartbeat before Temporal declares the
   * worker lost and retries elsewhere (default 60s; a long CPU prefill heartbeats
   * every few seconds, so this only needs to cover a stalled process).
   */
  heartbeatTimeoutMs?: number;
  customId?: string;
}

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';
export type JobStage =
  | 'queued'
  | 'preparing'
  | 'generating'
  | 'storing'
  | 'publishing'
  | 'completed'
  | 'cancelled'
  | 'failed';

export interface InstructionProgress {
  tokensDone: number;
  maxTokens: number;
  done: boolean;
}

export interface JobProgress {
  stage: JobStage;
  instructions: InstructionProgress[];
  documentTokens?: number;
  truncatedTokens?: number;
  resultRef?: string;
  error?: string;
}

export interface DocumentJobOutput {
  jobId: string;
  status: 'completed' | 'cancelled';
  resultRef?: string;
}

/** Per-instruction stats stored with each result (and shown by GET /v1/jobs/:id). */
export interface ResultStats extends GenerationStats {
  attention: 'sparse' | 'full';
  budget?: number;
  host: string;
  device: string;
  /** Filled by the preemption work: how often the activity resumed, and how. */
  resumes: number;
  resumedFrom?: 'checkpoint' | 'recompute';
  tokensRecomputed: number;
  /** Of tokensRecomputed, those re-prefilled (prompt + tokens so far) rather than decoded again. */
  tokensReprefilled?: number;
}

export interface InstructionResult {
  instruction: string;
  text: string;
  stats: ResultStats;
}

export interface JobResult {
  id: string;
  results: InstructionResult[];
  documentTokens: number;
  truncatedTokens: number;
}

// ---- activities ----

export interface PrepareInput {
  jobId: string;
  documentRef: string;
  instructions: string[];
  options: GenerationOptions;
  truncation: Truncation;
}

export interface PrepareOutput {
  /** The document as it will be read (truncated if the policy asked). */
  preparedRef: string;
  documentTokens: number;
  truncatedTokens: number;
}

export interface GenerateInput {
  jobId: string;
  index: number;
  preparedRef: string;
  instruction: string;
  options: GenerationOptions;
  /**
   * The previous attempt's last heartbeat, when the workflow retries generation
   * itself (workflows/generation.ts: a retry on another task queue is a new
   * activity, which starts without heartbeat details).
   */
  prior?: GenerateHeartbeat;
}

/** What generateAnswer returns: a reference plus counts, never the text. */
export interface GenerateOutput {
  resultRef: string;
  generatedTokens: number;
  finishReason: ResultStats['finishReason'];
}

/**
 * Heartbeat details of generateAnswer. Small by design: the preemption work adds
 * `checkpointId` (a reference to KV state held by `host`), never the KV itself.
 * On retry the activity reads the last one from `heartbeatDetails` to resume.
 */
export interface GenerateHeartbeat {
  /** Which instruction of the job (the API reads live progress from it). */
  index: number;
  tokensDone: number;
  host: string;
  taskQueue: string;
  checkpointId?: string;
  resumes: number;
  /**
   * The tokens generated so far (base64 of little-endian int32s; at most
   * SPECONTEXT_HEARTBEAT_MAX_TOKENS of them): a retry without the checkpoint
   * re-prefills them instead of generating them again.
   */
  tokens?: string;
  /** How long a retry should wait for `taskQueue` (the host holding the checkpoint). */
  hostWaitMs?: number;
}

export interface StoreResultInput {
  jobId: string;
  prepared: PrepareOutput;
  answers: GenerateOutput[];
}

export type JobEvent =
  | { type: 'progress'; jobId: string; index: number; tokensDone: number; text?: string }
  | { type: 'completed'; jobId: string; resultRef: string }
  | { type: 'failed'; jobId: string; error: string }
  | { type: 'cancelled'; jobId: string };

// ---- batches ----

/** One line of a batch, as the manifest blob stores it. */
export interface BatchItem {
  customId: string;
  /** Absent when the line was invalid; `error` then says why. */
  job?: Omit<DocumentJobInput, 'jobId' | 'batchId' | 'customId'>;
  error?: string;
}

export interface BatchCounts {
  total: number;
  completed: number;
  failed: number;
  cancelled: number;
}

export interface BatchOutcome {
  index: number;
  customId: string;
  jobId?: string;
  status: 'completed' | 'failed' | 'cancelled';
  resultRef?: string;
  error?: string;
}

export interface BatchJobInput {
  batchId: string;
  manifestRef: string;
  total: number;
  concurrency: number;
  /** Children started per run before continue-as-new; keeps history bounded. */
  itemsPerRun?: number;
  // Carried across continue-as-new:
  next?: number;
  counts?: BatchCounts;
  segments?: string[];
}

export interface BatchProgress {
  status: 'running' | 'completed' | 'cancelled';
  counts: BatchCounts & { running: number };
  /** Blobs of flushed outcomes (JSON arrays of BatchOutcome), in order. */
  segments: string[];
  /** Outcomes not yet flushed to a segment. */
  pending: BatchOutcome[];
}

export interface BatchJobOutput {
  batchId: string;
  status: 'completed' | 'cancelled';
  counts: BatchCounts;
  segments: string[];
}
