// How a document and an instruction become chat messages. Prepare uses it to
// measure the prompt; generate uses it to build the request: one definition so
// the two always agree on the prompt's length.
import type { ChatMessage } from '../engine/types';

export function messagesFor(document: string, instruction: string): ChatMessage[] {
  return [{ role: 'user', content: `${document}\n\n${instruction}` }];
}

/** Tokens kept free beyond the measured prompt, for tokenizer joins at the cut. */
export const PROMPT_MARGIN = 8;
