// How a document and an instruction become chat messages. Prepare uses it to
// measure the prompt; generate uses it to build the request: one definition so
// the two always agree on the prompt's length.
import type { ChatMessage } from '../engine/types';

export function messagesFor(document: string, instruction: string): ChatMessage[] {
  return [{ role: 'user', content: `${document}\n\n${instruction}` }];
}

/** Tokens kept free beyond the measured prompt, for tokenizer joins at the cut. */
export const PROMPT_MARGIN = 8;

/**
 * Tokens of the context left for the document: the context minus the answer
 * (maxTokens), the longest instruction with its chat template, and the margin.
 * `promptTokens` counts the templated prompt of given messages.
 */
export function documentRoom(
  context: number,
  maxTokens: number,
  instructions: string[],
  promptTokens: (messages: ChatMessage[]) => number,
): { room: number; overhead: number } {
  const overhead = Math.max(...instructions.map((i) => promptTokens(messagesFor('', i))));
  return { room: context - maxTokens - overhead - PROMPT_MARGIN, overhead };
}

/** Why a document does not fit, in words the user can act on; undefined if it fits. */
export function tooLong(
  documentTokens: number,
  room: number,
  overhead: number,
  context: number,
  maxTokens: number,
): string | undefined {
  if (room <= 0) {
    return `maxTokens ${maxTokens} plus the instruction (${overhead} tokens) leave no room for the document in the model's ${context}-token context`;
  }
  if (documentTokens <= room) return undefined;
  return `document is ${documentTokens} tokens but at most ${room} fit in the model's ${context}-token context with maxTokens ${maxTokens} and the instruction; shorten it, lower maxTokens, or set truncation to keep_start or keep_end`;
}
