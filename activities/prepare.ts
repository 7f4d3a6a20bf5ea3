// prepareDocument: reads the stored document, checks it is text that fits the
// model's context (or truncates it when the job asks), and stores what
// generation will read. Bad input is a non-retryable BadInput failure.
import { ApplicationFailure } from '@temporalio/activity';
import { BlobNotFoundError } from '../blobstore/store';
import { BAD_INPUT } from '../workflows/activities';
import type { PrepareInput, PrepareOutput } from '../workflows/types';
import type { ActivityDeps } from './deps';
import { documentRoom, tooLong } from './prompt';

export const badInput = (message: string) => ApplicationFailure.nonRetryable(message, BAD_INPUT);

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function decodeDocument(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw badInput('document is not valid UTF-8 text');
  }
}

export function makePrepare({ engine, blobs }: ActivityDeps) {
  return async function prepareDocument(input: PrepareInput): Promise<PrepareOutput> {
    let bytes: Uint8Array;
    try {
      bytes = await blobs.get(input.documentRef);
    } catch (err) {
      if (err instanceof BlobNotFoundError)
        throw badInput(`document ${input.documentRef} is not in the blob store`);
      throw err;
    }
    const document = decodeDocument(bytes);
    if (!document.trim()) throw badInput('document is empty');

    const context = engine.info.maxContext;
    const { maxTokens } = input.options;
    const { room, overhead } = documentRoom(
      context,
      maxTokens,
      input.instructions,
      (m) => engine.applyChatTemplate(m).length,
    );
    if (room <= 0) throw badInput(tooLong(0, room, overhead, context, maxTokens) as string);
    const tokens = engine.tokenize(document);
    const problem = tooLong(tokens.length, room, overhead, context, maxTokens);
    if (!problem) {
      return { preparedRef: input.documentRef, documentTokens: tokens.length, truncatedTokens: 0 };
    }
    if (input.truncation === 'reject') throw badInput(problem);
    const kept = input.truncation === 'keep_start' ? tokens.slice(0, room) : tokens.slice(-room);
    const preparedRef = await blobs.put(engine.detokenize(kept));
    return {
      preparedRef,
      documentTokens: kept.length,
      truncatedTokens: tokens.length - kept.length,
    };
  };
}
