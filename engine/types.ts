// The engine's TypeScript API: the only way the rest of the code reaches the
// native engine. Implemented by engine/index.ts over the Node-API addon.

export type Device = 'cpu' | `cuda:${number}`;

export interface EngineOptions {
  /** Directory in Hugging Face layout: config.json, *.safetensors, tokenizer.json. */
  model: string;
  device?: Device;
  /** 0 or undefined: all cores. */
  threads?: number;
  /** Requests decoded together (continuous batching). */
  maxBatch?: number;
  maxContext?: number;
  prefillChunk?: number;
  /** SpeContext retrieval head: a distilled model dir, or the target's first k layers. */
  dlm?: string;
  dlmLayers?: number;
  /**
   * Fallback: a sparse step whose selection carries less than this share of
   * the head's attention mass attends fully. Absent: the head's own
   * recommendation (a distilled head's config.json; none otherwise); 0: never.
   */
  fallback?: number;
}

export interface SamplingOptions {
  /** 0: greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
}

export interface GenerateRequest extends SamplingOptions {
  /** Either chat messages (the model's chat template is applied) ... */
  messages?: ChatMessage[];
  /** ... or raw text (no template) ... */
  text?: string;
  /** ... or token ids. Exactly one of the three. */
  tokens?: number[];
  maxTokens?: number;
  stopTokenIds?: number[];
  /** Sparse KV budget B; undefined or 0: full attention. */
  budget?: number;
  signal?: AbortSignal;
  /** Checkpoints of this request (docs/checkpoints.md). */
  checkpoint?: CheckpointOptions;
}

export interface CheckpointOptions {
  /** File the engine writes (and, with restore, reads) this request's checkpoint in. */
  path: string;
  /** Write after this many new tokens, and once right after prefill. */
  everyTokens?: number;
  /** Or after this many milliseconds. */
  everyMs?: number;
  /**
   * Continue from the checkpoint at `path`: `tokens` must be the original prompt followed by
   * the `resumedGenerated` tokens generated before. An unusable file is not an error: the
   * request prefills instead and `stats.restoreError` says why.
   */
  restore?: boolean;
  resumedGenerated?: number;
  /** After each checkpoint write; must not throw. */
  onCheckpoint?: (event: CheckpointEvent) => void;
}

export interface CheckpointEvent {
  ok: boolean;
  message?: string;
  path: string;
  /** KV positions in the file. */
  tokens: number;
  /** Tokens generated so far, resumed ones included. */
  generated: number;
  bytes: number;
  fileBytes: number;
  /** Time the engine's step spent on the snapshot. */
  stallMs: number;
  writeMs: number;
}

export type CheckpointInspection =
  | { ok: false; reason: string }
  | {
      ok: true;
      /** Every token of the request so far: prompt, generated, and the next one to feed. */
      tokens: Int32Array;
      kvTokens: number;
      generated: number;
      promptTokens: number;
      fileBytes: number;
    };

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  prefillTokensPerS: number;
  decodeTokensPerS: number;
  finishReason: 'stop' | 'length' | 'cancelled';
  /** KV positions restored from a checkpoint (0: none). */
  restoredTokens?: number;
  /** Why a requested restore fell back to prefill. */
  restoreError?: string;
  /** Checkpoints written. */
  checkpoints?: number;
}

export interface GenerationResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  stats: GenerationStats;
}

export interface GenerationChunk {
  token: number;
  /** Text decoded so far minus text already emitted (may be '' mid-codepoint). */
  text: string;
}

export interface EngineStats {
  activeRequests: number;
  queuedRequests: number;
  completedRequests: number;
  cancelledRequests: number;
  kvBytesInUse: number;
  prefillTokens: number;
  decodeTokens: number;
  threads: number;
  device: string;
  /** SpeContext, totals since open: decode steps that attended to a selection. */
  sparseSteps?: number;
  /** Decode steps of budgeted requests whose context was <= B (full attention). */
  fullSteps?: number;
  /** Steps whose selection carried too little attention mass (full attention). */
  fallbackSteps?: number;
  /** Target layers in the host tier now (adaptive placement). */
  hostLayers?: number;
  /** Times the memory planner changed the host-tier layer count. */
  layerMoves?: number;
  /** Tokens copied into host-tier slot buffers (elastic loading), and their bytes. */
  elasticLoads?: number;
  elasticBytes?: number;
  /** Loaded tokens over slots updated (the paper sees about 0.2). */
  reloadFraction?: number;
  /** The memory planner's device memory and its fixed part (weights, buffers); 0: off. */
  plannerMemoryBytes?: number;
  plannerFixedBytes?: number;
  /** CUDA host tier: prefetch time of host-tier rows, and the part decode waited for (ms). */
  transferMs?: number;
  exposedTransferMs?: number;
  /**
   * CUDA graphs of the dense decode step: steps recorded (once per batch shape),
   * steps run as one replay, and failed captures (eager from then on).
   */
  graphCaptures?: number;
  graphReplays?: number;
  graphFailures?: number;
  /** Host time spent recording those graphs (ms). */
  graphCaptureMs?: number;
}

export interface ModelInfo {
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxContext: number;
  eosTokenIds: number[];
}

export interface Engine {
  readonly info: ModelInfo;
  /** Promise form: resolves when generation ends; rejects on error or if aborted before start. */
  generate(request: GenerateRequest): Promise<GenerationResult>;
  /** Streaming form: yields chunks as tokens are produced; `result` settles at the end. */
  stream(request: GenerateRequest): GenerationStream;
  /** Token ids of text (no special tokens added). */
  tokenize(text: string): number[];
  detokenize(tokens: number[]): string;
  /** Chat template applied, generation prompt added, as token ids. */
  applyChatTemplate(messages: ChatMessage[]): number[];
  stats(): EngineStats;
  close(): Promise<void>;
  /** Validates a checkpoint file against this engine's model and returns its tokens. */
  inspectCheckpoint?(path: string): CheckpointInspection;
  /**
   * Checkpoints every running request that has a checkpoint path (SIGTERM), resolving with
   * one event per request once written, or when `timeoutMs` passes.
   */
  checkpointInFlight?(timeoutMs?: number): Promise<CheckpointEvent[]>;
}

export interface GenerationStream extends AsyncIterable<GenerationChunk> {
  readonly result: Promise<GenerationResult>;
}

/** Base class of every error the engine raises; `message` carries the native text. */
export class EngineError extends Error {
  override name = 'EngineError';
}
