// openEngine(): the typed Engine of engine/types.ts over the native addon.
// Tokenization and chat templates happen here; the addon only sees token ids.
import { existsSync, statSync } from 'node:fs';
import * as path from 'node:path';
import {
  EngineClosedError,
  InvalidRequestError,
  ModelLoadError,
  RequestAbortedError,
  toEngineError,
} from './errors';
import { loadNative, type NativeAddon, type NativeHandle } from './native';
import { RequestStream } from './stream';
import { ModelTokenizer } from './tokenizer';
import type {
  ChatMessage,
  CheckpointEvent,
  CheckpointInspection,
  Engine,
  EngineOptions,
  EngineStats,
  GenerateRequest,
  GenerationResult,
  GenerationStream,
  ModelInfo,
} from './types';
import { checkPrompt, checkTokenIds, validateOptions, validateRequest } from './validate';

export * from './errors';
export * from './types';

const DEFAULT_MAX_TOKENS = 128;

/** Backends compiled into the addon: 'cpu', plus 'cuda' when built with it. */
export function backends(): string[] {
  return loadNative().backends();
}

export async function openEngine(options: EngineOptions): Promise<Engine> {
  validateOptions(options);
  const dir = path.resolve(options.model);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new ModelLoadError(`model directory not found: ${dir}`);
  }
  const native = loadNative();
  // The model loads on a worker thread while this thread parses the tokenizer.
  const opening = native.open({
    modelDir: dir,
    device: options.device,
    threads: options.threads,
    maxBatch: options.maxBatch,
    maxContext: options.maxContext,
    prefillChunk: options.prefillChunk,
    dlmDir: options.dlm,
    dlmLayers: options.dlmLayers,
    fallbackMass: options.fallback,
  });
  let tokenizer: ModelTokenizer | undefined;
  try {
    tokenizer = ModelTokenizer.load(dir);
  } catch (err) {
    opening.then(
      (h) => native.close(h),
      () => {},
    );
    throw err;
  }
  let handle: NativeHandle;
  try {
    handle = await opening;
  } catch (err) {
    throw toEngineError(err);
  }
  return new NativeEngine(native, handle, tokenizer);
}

class NativeEngine implements Engine {
  readonly info: ModelInfo;
  private closed = false;
  private readonly defaultStops: number[];
  /** Running requests that write checkpoints: id -> who waits for their next one. */
  private readonly checkpointing = new Map<
    number,
    Array<(e: CheckpointEvent | undefined) => void>
  >();

  constructor(
    private readonly native: NativeAddon,
    private readonly handle: NativeHandle,
    private readonly tokenizer: ModelTokenizer | undefined,
  ) {
    this.info = native.info(handle);
    const stops = new Set(this.info.eosTokenIds);
    if (tokenizer?.eosTokenId !== undefined) stops.add(tokenizer.eosTokenId);
    this.defaultStops = [...stops];
  }

  generate(request: GenerateRequest): Promise<GenerationResult> {
    try {
      return this.stream(request).result;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Throws synchronously on a bad request, a closed engine or an already aborted signal. */
  stream(request: GenerateRequest): GenerationStream {
    this.assertOpen();
    validateRequest(request, this.info);
    const prompt = this.promptOf(request);
    checkPrompt(prompt, this.info);
    if (request.signal?.aborted) throw new RequestAbortedError('request aborted before it started');

    const tokenizer = this.tokenizer;
    const stream = new RequestStream(
      prompt.length,
      tokenizer ? (ids) => tokenizer.decode(ids) : undefined,
    );
    let onAbort: (() => void) | undefined;
    const detach = () => {
      if (onAbort) request.signal?.removeEventListener('abort', onAbort);
    };
    let id: number;
    try {
      id = this.native.submit(
        this.handle,
        {
          prompt,
          maxNewTokens: request.maxTokens ?? DEFAULT_MAX_TOKENS,
          temperature: request.temperature,
          topK: request.topK,
          topP: request.topP,
          seed: request.seed,
          stopTokenIds: request.stopTokenIds ?? this.defaultStops,
          budget: request.budget,
          checkpoint: request.checkpoint && {
            path: request.checkpoint.path,
            everyTokens: request.checkpoint.everyTokens,
            everyMs: request.checkpoint.everyMs,
            restore: request.checkpoint.restore,
            resumedGenerated: request.checkpoint.resumedGenerated,
          },
        },
        // Runs from the addon's thread-safe function: it must never throw.
        (kind: string, payload: unknown) => {
          try {
            if (kind === 'token') stream.onToken(payload as number);
            else if (kind === 'checkpoint') {
              const event = payload as CheckpointEvent;
              for (const w of this.checkpointing.get(id)?.splice(0) ?? []) w(event);
              request.checkpoint?.onCheckpoint?.(event);
            } else if (kind === 'done') {
              this.endCheckpointing(id);
              detach();
              stream.onDone(payload as Parameters<RequestStream['onDone']>[0]);
            } else {
              this.endCheckpointing(id);
              detach();
              stream.onError(toEngineError(payload));
            }
          } catch (err) {
            detach();
            stream.onError(toEngineError(err));
          }
        },
      );
    } catch (err) {
      throw toEngineError(err);
    }
    if (request.checkpoint) this.checkpointing.set(id, []);
    if (request.signal) {
      onAbort = () => this.native.cancel(this.handle, id);
      request.signal.addEventListener('abort', onAbort, { once: true });
    }
    return stream;
  }

  inspectCheckpoint(file: string): CheckpointInspection {
    this.assertOpen();
    try {
      return this.native.inspectCheckpoint(this.handle, file);
    } catch (err) {
      throw toEngineError(err);
    }
  }

  async checkpointInFlight(timeoutMs = 10_000): Promise<CheckpointEvent[]> {
    this.assertOpen();
    const waits = [...this.checkpointing.entries()].map(
      ([id, waiters]) =>
        new Promise<CheckpointEvent | undefined>((resolve) => {
          waiters.push(resolve);
          this.native.checkpointNow(this.handle, id);
        }),
    );
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), timeoutMs);
    });
    const events = await Promise.all(waits.map((w) => Promise.race([w, timeout])));
    clearTimeout(timer);
    return events.filter((e): e is CheckpointEvent => e !== undefined);
  }

  /** A request ended: whoever waits for its checkpoint stops waiting. */
  private endCheckpointing(id: number): void {
    for (const w of this.checkpointing.get(id) ?? []) w(undefined);
    this.checkpointing.delete(id);
  }

  tokenize(text: string): number[] {
    this.assertOpen();
    if (typeof text !== 'string') throw new InvalidRequestError('tokenize() needs a string');
    return this.needTokenizer().encode(text);
  }

  detokenize(tokens: number[]): string {
    this.assertOpen();
    return this.needTokenizer().decode(checkTokenIds('tokens', tokens, this.info.vocabSize));
  }

  applyChatTemplate(messages: ChatMessage[]): number[] {
    this.assertOpen();
    validateRequest({ messages }, this.info);
    return this.needTokenizer().applyChatTemplate(messages);
  }

  stats(): EngineStats {
    this.assertOpen();
    try {
      return this.native.stats(this.handle);
    } catch (err) {
      throw toEngineError(err);
    }
  }

  /** Idempotent: later calls resolve at once. Running requests end as 'cancelled'. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.native.close(this.handle);
    } catch (err) {
      throw toEngineError(err);
    }
  }

  private promptOf(request: GenerateRequest): number[] {
    if (request.tokens !== undefined)
      return checkTokenIds('tokens', request.tokens, this.info.vocabSize);
    if (request.text !== undefined) return this.needTokenizer().encode(request.text);
    return this.needTokenizer().applyChatTemplate(request.messages as ChatMessage[]);
  }

  private needTokenizer(): ModelTokenizer {
    if (!this.tokenizer) {
      throw new InvalidRequestError('this model directory has no tokenizer.json: pass token ids');
    }
    return this.tokenizer;
  }

  private assertOpen(): void {
    if (this.closed)
      throw new EngineClosedError('engine is closed: open a new one with openEngine()');
  }
}
