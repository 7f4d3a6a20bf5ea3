// First-line validation at the TypeScript edge: every bad option or request
// becomes an InvalidRequestError naming the field. The engine checks again
// (token ids against the vocab, prompt against the context) as second line.
import { InvalidRequestError } from './errors';
import type { EngineOptions, GenerateRequest, ModelInfo } from './types';

function fail(message: string): never {
  throw new InvalidRequestError(message);
}

function checkInt(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    fail(`${name} must be an integer in [${min}, ${max}], got ${String(v)}`);
  }
}

function checkNumber(name: string, v: unknown, min: number, max: number): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    fail(`${name} must be a number in [${min}, ${max}], got ${String(v)}`);
  }
}

export function validateOptions(options: EngineOptions): void {
  if (!options || typeof options.model !== 'string' || options.model === '') {
    fail('options.model must be the path of a model directory');
  }
  if (options.device !== undefined && !/^(cpu|cuda:\d+)$/.test(options.device)) {
    fail(`options.device must be "cpu" or "cuda:N", got ${String(options.device)}`);
  }
  checkInt('options.threads', options.threads, 0, 1024);
  checkInt('options.maxBatch', options.maxBatch, 1, 4096);
  checkInt('options.maxContext', options.maxContext, 0);
  checkInt('options.prefillChunk', options.prefillChunk, 1);
  checkInt('options.dlmLayers', options.dlmLayers, 0);
  const f = options.fallback;
  if (f !== undefined && (typeof f !== 'number' || !Number.isFinite(f) || f < 0 || f >= 1)) {
    fail(`options.fallback must be a number in [0, 1), got ${String(f)}`);
  }
}

export function checkTokenIds(name: string, ids: unknown, vocabSize: number): number[] {
  if (!Array.isArray(ids)) fail(`${name} must be an array of token ids`);
  ids.forEach((id, i) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      fail(
        `${name}[${i}] = ${String(id)} is not a token id of this model (vocab size ${vocabSize})`,
      );
    }
  });
  return ids as number[];
}

/** Checks the request's shape; the prompt itself is checked once it is token ids. */
export function validateRequest(request: GenerateRequest, info: ModelInfo): void {
  if (!request || typeof request !== 'object') fail('request must be an object');
  const inputs = [request.messages, request.text, request.tokens].filter((v) => v !== undefined);
  if (inputs.length !== 1) fail('request needs exactly one of messages, text or tokens');
  if (request.messages !== undefined) {
    if (!Array.isArray(request.messages) || request.messages.length === 0) {
      fail('messages must be a non-empty array');
    }
    for (const [i, m] of request.messages.entries()) {
      if (
        !m ||
        !['system', 'user', 'assistant'].includes(m.role) ||
        typeof m.content !== 'string'
      ) {
        fail(`messages[${i}] must be {role: system|user|assistant, content: string}`);
      }
    }
  }
  if (request.text !== undefined && (typeof request.text !== 'string' || request.text === '')) {
    fail('text must be a non-empty string');
  }
  if (request.maxTokens !== undefined) {
    if (!Number.isInteger(request.maxTokens) || request.maxTokens <= 0) {
      fail(`maxTokens must be a positive integer, got ${String(request.maxTokens)}`);
    }
  }
  checkNumber('temperature', request.temperature, 0, 100);
  checkInt('topK', request.topK, 0, info.vocabSize);
  if (request.topP !== undefined) {
    if (typeof request.topP !== 'number' || !(request.topP > 0 && request.topP <= 1)) {
      fail(`topP must be in (0, 1], got ${String(request.topP)}`);
    }
  }
  checkInt('seed', request.seed, 0);
  checkInt('budget', request.budget, 0);
  if (request.stopTokenIds !== undefined) {
    checkTokenIds('stopTokenIds', request.stopTokenIds, info.vocabSize);
  }
}

/** The prompt must leave room for at least one generated token. */
export function checkPrompt(prompt: number[], info: ModelInfo): void {
  if (prompt.length === 0) fail('the prompt is empty');
  checkTokenIds('tokens', prompt, info.vocabSize);
  if (prompt.length >= info.maxContext) {
    fail(
      `the prompt has ${prompt.length} tokens but the context holds ${info.maxContext} (prompt plus at least one new token)`,
    );
  }
}
