// The real model (models/smollm2-135m-instruct, made by `tools/convert_smollm2.py`
// during setup) through the TypeScript API: tokenizer and chat template agree
// with Hugging Face, the Paris check, streaming, cancellation, batching.
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type Engine, openEngine } from '../engine';
import { StreamDecoder } from '../engine/detokenizer';
import { SMOLLM2 } from './engine-helpers';

const haveModel = existsSync(path.join(SMOLLM2, 'model.safetensors'));
if (!haveModel) console.warn(`skipping SmolLM2 tests: ${SMOLLM2} is missing (run the setup)`);

// Ids from the Python `tokenizers` library (0.23.3, encode(s, add_special_tokens=False))
// on the same tokenizer.json.
const HF_IDS: [string, number[]][] = [
  ['Hello, world!', [19556, 28, 905, 17]],
  ['The capital of France is Paris.', [504, 3575, 282, 4649, 314, 7042, 30]],
  [
    '  leading spaces and\ttabs\n\nnewlines',
    [216, 2899, 5600, 284, 197, 100, 7366, 198, 198, 2241, 5110],
  ],
  [
    'naïve café — “quotes” 東京 🚀🐳',
    [
      3546, 46494, 37366, 1841, 619, 385, 2346, 573, 17097, 247, 126, 16736, 122, 15107, 244, 218,
      10813, 234, 128,
    ],
  ],
  ['<|im_start|>user\nhi<|im_end|>\n', [1, 4093, 198, 6004, 2, 198]],
  [
    'x = [1, 2, 3]; print(sum(x)) # 12345678',
    [
      104, 446, 933, 33, 28, 216, 34, 28, 216, 35, 26695, 1628, 24, 5422, 24, 104, 1292, 907, 216,
      33, 34, 35, 36, 37, 38, 39, 40,
    ],
  ],
];

// transformers 5.24.0: tokenizer.apply_chat_template(messages, add_generation_prompt=True).
const PARIS_MESSAGES = [{ role: 'user' as const, content: 'What is the capital of France?' }];
const HF_PARIS_CHAT_IDS = [
  1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
  19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];

describe.skipIf(!haveModel)('SmolLM2-135M-Instruct', () => {
  let engine: Engine;
  beforeAll(async () => {
    engine = await openEngine({ model: SMOLLM2, maxBatch: 8 });
  });
  afterAll(() => engine?.close());

  test.each(HF_IDS)('tokenize(%j) equals the HF tokenizer', (text, ids) => {
    expect(engine.tokenize(text)).toEqual(ids);
    expect(engine.detokenize(ids)).toBe(text.replace(/<\|im_(start|end)\|>/g, ''));
  });

  test('the chat template gives the ids transformers gives', () => {
    expect(engine.applyChatTemplate(PARIS_MESSAGES)).toEqual(HF_PARIS_CHAT_IDS);
  });

  test('streaming detokenization reassembles multi-byte characters', () => {
    const [text, ids] = HF_IDS[3] as [string, number[]];
    const decoder = new StreamDecoder((t) => engine.detokenize(t));
    const pieces = ids.map((id) => decoder.push(id));
    expect(pieces.join('')).toBe(text);
    expect(pieces.some((p) => p === '')).toBe(true); // some tokens end mid-character
    expect(pieces.every((p) => !p.includes('\uFFFD'))).toBe(true);
  });

  test('Paris: the chat-templated question is answered with Paris', async () => {
    const stream = engine.stream({ messages: PARIS_MESSAGES, maxTokens: 24 });
    let streamed = '';
    for await (const chunk of stream) streamed += chunk.text;
    const result = await stream.result;
    expect(result.text).toContain('Paris');
    expect(streamed).toBe(result.text);
    expect(result.promptTokens).toBe(HF_PARIS_CHAT_IDS.length);
    expect(result.stats.finishReason).toBe('stop'); // ended on <|im_end|>
    expect(result.stats.prefillTokensPerS).toBeGreaterThan(0);
    expect(result.stats.decodeTokensPerS).toBeGreaterThan(0);
  });

  test('an AbortSignal mid-stream cancels the request and frees it', async () => {
    const before = engine.stats();
    const controller = new AbortController();
    const stream = engine.stream({
      text: 'Call me Ishmael. Some years ago',
      maxTokens: 400,
      stopTokenIds: [],
      signal: controller.signal,
    });
    let seen = 0;
    for await (const _ of stream) {
      seen += 1;
      if (seen === 2) {
        expect(engine.stats().activeRequests).toBe(1);
        expect(engine.stats().kvBytesInUse).toBeGreaterThan(0);
        controller.abort();
      }
    }
    const result = await stream.result;
    expect(result.stats.finishReason).toBe('cancelled');
    expect(result.tokens.length).toBeLessThan(400);
    const after = engine.stats();
    expect(after.cancelledRequests).toBe(before.cancelledRequests + 1);
    expect(after.activeRequests).toBe(0);
    expect(after.queuedRequests).toBe(0);
    expect(after.kvBytesInUse).toBe(0);
  });

  test('5 concurrent requests of different lengths get the same tokens as alone', async () => {
    const text =
      'Call me Ishmael. Some years ago, never mind how long precisely, having little money';
    const requests = [2, 4, 7, 11, 15].map((words, i) => ({
      tokens: engine.tokenize(text.split(' ').slice(0, words).join(' ')),
      maxTokens: 3 + i,
      stopTokenIds: [],
    }));
    const alone: number[][] = [];
    for (const r of requests) alone.push((await engine.generate(r)).tokens);
    const together = await Promise.all(requests.map((r) => engine.generate(r)));
    expect(together.map((r) => r.tokens)).toEqual(alone);
  });

  test('native open and generate never block the event loop', async () => {
    // Without tokenizer.json only native work remains (tokenizer parsing is JS).
    const dir = mkdtempSync(path.join(os.tmpdir(), 'spx-smollm2-'));
    for (const f of ['config.json', 'model.safetensors'])
      symlinkSync(path.join(SMOLLM2, f), path.join(dir, f));
    let last = performance.now();
    let maxGap = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
    }, 5);
    const started = performance.now();
    try {
      const second = await openEngine({ model: dir, threads: 1 });
      try {
        await second.generate({ tokens: [12800, 549, 46588, 30], maxTokens: 4, stopTokenIds: [] });
      } finally {
        await second.close();
      }
    } finally {
      clearInterval(timer);
      rmSync(dir, { recursive: true, force: true });
    }
    const took = performance.now() - started;
    // Loading 0.5 GB and running the model take hundreds of ms at least; had
    // any of it run on the JS thread, the longest timer gap would be close to
    // `took` instead of a small share of it.
    expect(took).toBeGreaterThan(200);
    expect(maxGap).toBeLessThan(Math.min(300, took / 4));
  });
});
