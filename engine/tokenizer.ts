// Tokenization and the chat template, on the TypeScript side by design:
// @huggingface/tokenizers reads tokenizer.json, @huggingface/jinja renders
// the chat_template of tokenizer_config.json (or chat_template.jinja), with
// bos/eos taken from that config as transformers does.
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { InvalidRequestError, ModelLoadError } from './errors';
import type { ChatMessage } from './types';

type TokenField = string | { content?: string } | null | undefined;

interface TokenizerConfig {
  chat_template?: string | Array<{ name: string; template: string }>;
  bos_token?: TokenField;
  eos_token?: TokenField;
  [key: string]: unknown;
}

function tokenText(field: TokenField): string | undefined {
  if (typeof field === 'string') return field;
  return field?.content ?? undefined;
}

function readJson(file: string, what: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ModelLoadError(`cannot read ${what} ${file}: ${(err as Error).message}`);
  }
}

export class ModelTokenizer {
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  /** Ids of the eos token of tokenizer_config.json, if it is in the vocab. */
  readonly eosTokenId: number | undefined;
  private readonly template: Template | undefined;

  private constructor(
    private readonly tokenizer: Tokenizer,
    config: TokenizerConfig,
    templateText: string | undefined,
  ) {
    this.bosToken = tokenText(config.bos_token);
    this.eosToken = tokenText(config.eos_token);
    this.eosTokenId =
      this.eosToken === undefined ? undefined : tokenizer.token_to_id(this.eosToken);
    this.template = templateText === undefined ? undefined : new Template(templateText);
  }

  /** Loads dir/tokenizer.json (+ tokenizer_config.json); undefined if the model ships none. */
  static load(dir: string): ModelTokenizer | undefined {
    const tokenizerFile = path.join(dir, 'tokenizer.json');
    if (!existsSync(tokenizerFile)) return undefined;
    const configFile = path.join(dir, 'tokenizer_config.json');
    const config = (
      existsSync(configFile) ? readJson(configFile, 'tokenizer config') : {}
    ) as TokenizerConfig;
    let templateText: string | undefined;
    if (typeof config.chat_template === 'string') templateText = config.chat_template;
    else if (Array.isArray(config.chat_template)) {
      templateText = config.chat_template.find((t) => t.name === 'default')?.template;
    }
    const jinjaFile = path.join(dir, 'chat_template.jinja');
    if (templateText === undefined && existsSync(jinjaFile)) {
      templateText = readFileSync(jinjaFile, 'utf8');
    }
    try {
      const tokenizer = new Tokenizer(readJson(tokenizerFile, 'tokenizer') as object, config);
      return new ModelTokenizer(tokenizer, config, templateText);
    } catch (err) {
      if (err instanceof ModelLoadError) throw err;
      throw new ModelLoadError(
        `cannot build tokenizer from ${tokenizerFile}: ${(err as Error).message}`,
      );
    }
  }

  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(tokens: number[], skipSpecial = true): string {
    if (tokens.length === 0) return ''; // the library rejects empty input
    return this.tokenizer.decode(tokens, {
      skip_special_tokens: skipSpecial,
      clean_up_tokenization_spaces: false,
    });
  }

  /** The rendered prompt text, ending with the assistant's generation prompt. */
  renderChat(messages: ChatMessage[]): string {
    if (!this.template) {
      throw new InvalidRequestError('this model has no chat_template: pass text or tokens instead');
    }
    return this.template.render({
      messages,
      add_generation_prompt: true,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
    });
  }

  applyChatTemplate(messages: ChatMessage[]): number[] {
    return this.encode(this.renderChat(messages));
  }
}
