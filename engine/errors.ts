// Typed engine errors. The addon tags each error with a code; toEngineError
// turns it into one of these classes with the native message intact.
import { EngineError } from './types';

/** The addon was not built, or does not load on this machine. */
export class AddonMissingError extends EngineError {
  override name = 'AddonMissingError';
}

/** The model directory, its config, weights or tokenizer could not be loaded. */
export class ModelLoadError extends EngineError {
  override name = 'ModelLoadError';
}

/** Bad options or a bad request (caught in TypeScript, or by the engine). */
export class InvalidRequestError extends EngineError {
  override name = 'InvalidRequestError';
}

/** A call into an engine after close(). */
export class EngineClosedError extends EngineError {
  override name = 'EngineClosedError';
}

/** The engine failed while running a request. */
export class GenerationError extends EngineError {
  override name = 'GenerationError';
}

/** The request's AbortSignal fired before it was submitted. */
export class RequestAbortedError extends EngineError {
  override name = 'RequestAbortedError';
}

const byCode: Record<string, new (message: string) => EngineError> = {
  SPX_OPEN: ModelLoadError,
  SPX_INVALID_REQUEST: InvalidRequestError,
  SPX_CLOSED: EngineClosedError,
  SPX_GENERATION: GenerationError,
};

export function toEngineError(err: unknown): EngineError {
  if (err instanceof EngineError) return err;
  if (err instanceof Error) {
    const code = (err as Error & { code?: string }).code;
    const Kind = (code && byCode[code]) || EngineError;
    return new Kind(err.message);
  }
  return new EngineError(String(err));
}
