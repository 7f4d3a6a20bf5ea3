// Checks at submission that a document fits the model's context, with the
// model's own tokenizer and chat template (pure JS: the API process has no
// engine). The worker's prepare step checks again, exactly, with the engine.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { documentRoom, tooLong } from '../activities/prompt';
import { ModelTokenizer } from '../engine/tokenizer';
import type { GenerationOptions, Truncation } from '../workflows/types';

export class DocumentSizer {
  private constructor(
    private readonly tokenizer: ModelTokenizer,
    readonly context: number,
  ) {}

  /** Undefined when the model dir has no tokenizer or config: the worker still checks. */
  static load(modelDir: string, maxContext?: number): DocumentSizer | undefined {
    const configFile = path.join(modelDir, 'config.json');
    if (!existsSync(configFile)) return undefined;
    const tokenizer = ModelTokenizer.load(modelDir);
    if (!tokenizer) return undefined;
    const config = JSON.parse(readFileSync(configFile, 'utf8')) as {
      max_position_embeddings?: number;
    };
    const context = Math.min(maxContext ?? Infinity, config.max_position_embeddings ?? Infinity);
    if (!Number.isFinite(context)) return undefined;
    return new DocumentSizer(tokenizer, context);
  }

  /** Why this job's document does not fit, or undefined. Truncating jobs always fit. */
  problem(
    document: string,
    instructions: string[],
    options: GenerationOptions,
    truncation: Truncation,
  ): string | undefined {
    const { room, overhead } = documentRoom(
      this.context,
      options.maxTokens,
      instructions,
      (m) => this.tokenizer.applyChatTemplate(m).length,
    );
    if (room <= 0) return tooLong(0, room, overhead, this.context, options.maxTokens);
    if (truncation !== 'reject') return undefined;
    const tokens = this.tokenizer.encode(document).length;
    return tooLong(tokens, room, overhead, this.context, options.maxTokens);
  }
}
