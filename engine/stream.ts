// One request's stream: native events in, chunks and a final result out.
// Chunks are buffered until read, so a caller may iterate, await `result`,
// or both.
import { StreamDecoder } from './detokenizer';
import type { GenerationChunk, GenerationResult, GenerationStats, GenerationStream } from './types';

interface Waiter {
  resolve: (r: IteratorResult<GenerationChunk>) => void;
  reject: (err: unknown) => void;
}

export class RequestStream implements GenerationStream {
  readonly result: Promise<GenerationResult>;
  private resolveResult!: (r: GenerationResult) => void;
  private rejectResult!: (err: unknown) => void;
  private readonly chunks: GenerationChunk[] = [];
  private readonly waiters: Waiter[] = [];
  private readonly tokens: number[] = [];
  private readonly decoder: StreamDecoder | undefined;
  private ended = false;
  private failure: unknown;

  constructor(
    private readonly promptTokens: number,
    private readonly decode: ((tokens: number[]) => string) | undefined,
  ) {
    this.result = new Promise((resolve, reject) => {
      this.resolveResult = resolve;
      this.rejectResult = reject;
    });
    // A caller that only iterates still sees the error there; this keeps an
    // unobserved rejection from crashing the process.
    this.result.catch(() => {});
    this.decoder = decode ? new StreamDecoder(decode) : undefined;
  }

  onToken(token: number): void {
    this.tokens.push(token);
    this.push({ token, text: this.decoder ? this.decoder.push(token) : '' });
  }

  onDone(stats: Omit<GenerationStats, 'finishReason'> & { finishReason: string }): void {
    const finishReason = (
      ['stop', 'length', 'cancelled'].includes(stats.finishReason) ? stats.finishReason : 'stop'
    ) as GenerationStats['finishReason'];
    this.resolveResult({
      text: this.decode ? this.decode(this.tokens) : '',
      tokens: [...this.tokens],
      promptTokens: this.promptTokens,
      stats: { ...stats, finishReason },
    });
    this.end();
  }

  onError(err: unknown): void {
    this.failure = err;
    this.rejectResult(err);
    this.end();
  }

  [Symbol.asyncIterator](): AsyncIterator<GenerationChunk> {
    return {
      next: () => {
        const chunk = this.chunks.shift();
        if (chunk) return Promise.resolve({ value: chunk, done: false });
        if (this.ended) {
          return this.failure === undefined
            ? Promise.resolve({ value: undefined, done: true })
            : Promise.reject(this.failure);
        }
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
      },
    };
  }

  private push(chunk: GenerationChunk): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve({ value: chunk, done: false });
    else this.chunks.push(chunk);
  }

  private end(): void {
    this.ended = true;
    for (const w of this.waiters.splice(0)) {
      if (this.failure === undefined) w.resolve({ value: undefined, done: true });
      else w.reject(this.failure);
    }
  }
}
