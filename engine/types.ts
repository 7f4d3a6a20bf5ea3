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
}

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
}

export interface GenerationStream extends AsyncIterable<GenerationChunk> {
  readonly result: Promise<GenerationResult>;
}

/** Base class of every error the engine raises; `message` carries the native text. */
export class EngineError extends Error {
  override name = 'EngineError';
}
