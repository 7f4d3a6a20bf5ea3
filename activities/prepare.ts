// prepareDocument: reads the stored document, checks it is text that fits the
// model's context (or truncates it when the job asks), and stores what
// generation will read. Bad input is a non-retryable BadInput failure.
import { ApplicationFailure } from '@temporalio/activity';
import { BlobNotFoundError } from '../blobstore/store';
import { BAD_INPUT } from '../workflows/activities';
import type { PrepareInput, PrepareOutput } from '../workflows/types';
import type { ActivityDeps } from './deps';
import { messagesFor, PROMPT_MARGIN } from './prompt';

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
    // The longest instruction decides how much of the context the document may use.
    const overhead = Math.max(
      ...input.instructions.map((i) => engine.applyChatTemplate(messagesFor('', i)).length),
    );
    const room = context - maxTokens - overhead - PROMPT_MARGIN;
    if (room <= 0) {
      throw badInput(
        `maxTokens ${maxTokens} plus the instruction (${overhead} tokens) leave no room for the document in the model's ${context}-token context`,
      );
    }
    const tokens = engine.tokenize(document);
    if (tokens.length <= room) {
      return { preparedRef: input.documentRef, documentTokens: tokens.length, truncatedTokens: 0 };
    }
    if (input.truncation === 'reject') {
      throw badInput(
        `document is ${tokens.length} tokens but at most ${room} fit in the model's ${context}-token context with maxTokens ${maxTokens} and the instruction; shorten it, lower maxTokens, or set truncation to keep_start or keep_end`,
      );
    }
    const kept = input.truncation === 'keep_start' ? tokens.slice(0, room) : tokens.slice(-room);
    const preparedRef = await blobs.put(engine.detokenize(kept));
    return {
      preparedRef,
      documentTokens: kept.length,
      truncatedTokens: tokens.length - kept.length,
    };
  };
}
