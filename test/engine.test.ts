// The engine through its TypeScript API, on the committed tiny checkpoints
// (real addon, real files): greedy tokens against transformers, bad input as
// typed JS errors (the process keeps running), batching, close semantics.
import { readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  backends,
  type Engine,
  EngineClosedError,
  EngineError,
  InvalidRequestError,
  ModelLoadError,
  openEngine,
  RequestAbortedError,
} from '../engine';
import { loadNative } from '../engine/native';
import {
  cleanupCopies,
  copyFixture,
  editJson,
  editSafetensorsHeader,
  FIXTURES,
  reference,
  someTensor,
} from './engine-helpers';

afterAll(cleanupCopies);

describe.each(['tiny-llama', 'tiny-qwen2', 'tiny-qwen3'])('%s', (name) => {
  test('greedy tokens equal the transformers reference', async () => {
    const ref = reference(name);
    const engine = await openEngine({ model: path.join(FIXTURES, name), threads: 1 });
    try {
      expect(engine.tokenize(ref.prompt_text)).toEqual(ref.prompt_ids);
      const r = await engine.generate({
        tokens: ref.prompt_ids,
        maxTokens: ref.generated_ids.length,
        stopTokenIds: [],
      });
      expect(r.tokens).toEqual(ref.generated_ids);
      expect(r.promptTokens).toBe(ref.prompt_ids.length);
      expect(r.stats.finishReason).toBe('length');
    } finally {
      await engine.close();
    }
  });
});

// SpeContext through the TypeScript API (the engine's own tests cover the
// selection itself: native/tests/retrieval_engine_test.cc). A budget covering
// the whole context is full attention; a fallback threshold above any mass
// the selection can carry turns every sparse step into a counted fallback.
describe('sparse decoding options (tiny-llama)', () => {
  const ref = () => reference('tiny-llama');
  async function run(options: { fallback?: number }, budget: number) {
    const engine = await openEngine({
      model: path.join(FIXTURES, 'tiny-llama'),
      threads: 1,
      dlmLayers: 1,
      ...options,
    });
    try {
      const r = await engine.generate({
        tokens: ref().prompt_ids,
        maxTokens: ref().generated_ids.length,
        stopTokenIds: [],
        budget,
      });
      return { tokens: r.tokens, stats: engine.stats() };
    } finally {
      await engine.close();
    }
  }

  test('a budget covering the context gives the full-attention tokens', async () => {
    const r = await run({}, 4096);
    expect(r.tokens).toEqual(ref().generated_ids);
    expect(r.stats.fallbackSteps).toBe(0);
  });

  test('fallback: 0 never falls back, 0.999 falls back on every sparse step', async () => {
    const budget = 4; // below the prompt: every decode step selects
    const off = await run({ fallback: 0 }, budget);
    expect(off.stats.sparseSteps).toBeGreaterThan(0);
    expect(off.stats.fallbackSteps).toBe(0);
    const always = await run({ fallback: 0.999 }, budget);
    expect(always.stats.fallbackSteps).toBeGreaterThan(0);
    // Full attention on those steps: the reference's tokens again.
    expect(always.tokens).toEqual(ref().generated_ids);
  });

  test.each([1, -0.5, Number.NaN])('fallback %s is refused before the model loads', async (f) => {
    await expect(
      openEngine({ model: path.join(FIXTURES, 'tiny-llama'), fallback: f }),
    ).rejects.toThrow(/options\.fallback/);
  });
});

describe('bad model directories are ModelLoadErrors', () => {
  async function openFails(dir: string, pattern: RegExp): Promise<void> {
    const err = await openEngine({ model: dir, threads: 1 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ModelLoadError);
    expect((err as Error).message).toMatch(pattern);
  }

  test('missing model dir', async () => {
    await openFails(
      path.join(FIXTURES, 'no-such-model'),
      /model directory not found.*no-such-model/,
    );
  });

  test('missing config.json', async () => {
    const dir = copyFixture('tiny-llama');
    rmSync(path.join(dir, 'config.json'));
    await openFails(dir, /config\.json/);
  });

  test('corrupt config.json', async () => {
    const dir = copyFixture('tiny-llama');
    writeFileSync(
      path.join(dir, 'config.json'),
      '{"architectures": ["LlamaForCausalLM"], "hidden_',
    );
    await openFails(dir, /config\.json/);
  });

  test('config.json with a nonsense size', async () => {
    const dir = copyFixture('tiny-llama');
    editJson(path.join(dir, 'config.json'), (c) => {
      c.num_attention_heads = 0;
    });
    await openFails(dir, /num_attention_heads|head/);
  });

  test('unsupported architecture', async () => {
    const dir = copyFixture('tiny-llama');
    editJson(path.join(dir, 'config.json'), (c) => {
      c.architectures = ['GPT2LMHeadModel'];
    });
    await openFails(dir, /GPT2LMHeadModel/);
  });

  test('safetensors offsets out of range', async () => {
    const dir = copyFixture('tiny-llama');
    editSafetensorsHeader(dir, (h) => {
      const t = someTensor(h);
      t.data_offsets = [t.data_offsets[0], t.data_offsets[1] + 10_000_000];
    });
    await openFails(dir, /model\.embed_tokens\.weight|offset|range|size/i);
  });

  test('safetensors dtype that does not match the byte size', async () => {
    const dir = copyFixture('tiny-llama');
    editSafetensorsHeader(dir, (h) => {
      someTensor(h).dtype = 'F16';
    });
    await openFails(dir, /model\.embed_tokens\.weight|dtype|size|bytes/i);
  });

  test('safetensors dtype the engine does not support', async () => {
    const dir = copyFixture('tiny-llama');
    editSafetensorsHeader(dir, (h) => {
      someTensor(h).dtype = 'I32'; // same byte size as F32: only the dtype is wrong
    });
    await openFails(dir, /I32/);
  });

  test('truncated safetensors', async () => {
    const dir = copyFixture('tiny-llama');
    const file = path.join(dir, 'model.safetensors');
    truncateSync(file, Math.floor(readFileSync(file).length / 2));
    await openFails(dir, /safetensors|truncat|range|size|offset/i);
  });

  test('safetensors header length beyond the file', async () => {
    const dir = copyFixture('tiny-llama');
    const file = path.join(dir, 'model.safetensors');
    const bytes = readFileSync(file);
    bytes.writeBigUInt64LE(BigInt(bytes.length * 4), 0);
    writeFileSync(file, bytes);
    await openFails(dir, /safetensors|header|size|length/i);
  });

  test('a tensor missing from the checkpoint', async () => {
    const dir = copyFixture('tiny-llama');
    editSafetensorsHeader(dir, (h) => {
      delete h['model.layers.1.mlp.down_proj.weight'];
    });
    await openFails(dir, /model\.layers\.1\.mlp\.down_proj\.weight/);
  });
});

describe('bad requests are InvalidRequestErrors', () => {
  let engine: Engine;
  const ref = reference('tiny-llama');
  beforeAll(async () => {
    engine = await openEngine({ model: path.join(FIXTURES, 'tiny-llama'), threads: 1 });
  });
  afterAll(() => engine.close());

  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['maxTokens 0', { maxTokens: 0 }, /maxTokens must be a positive integer/],
    ['maxTokens negative', { maxTokens: -5 }, /maxTokens must be a positive integer/],
    ['maxTokens fractional', { maxTokens: 1.5 }, /maxTokens/],
    ['token id out of range', { tokens: [72, 258] }, /tokens\[1\] = 258 .*vocab size 258/],
    ['negative token id', { tokens: [-1] }, /tokens\[0\] = -1/],
    [
      'prompt longer than the context',
      { tokens: new Array(300).fill(65) },
      /300 tokens .*context holds 256/,
    ],
    ['no input', { tokens: undefined }, /exactly one of messages, text or tokens/],
    ['two inputs', { text: 'hi' }, /exactly one of messages, text or tokens/],
    ['topP 0', { topP: 0 }, /topP/],
    ['negative temperature', { temperature: -1 }, /temperature/],
    ['stop id out of range', { stopTokenIds: [9999] }, /stopTokenIds\[0\]/],
  ];
  test.each(cases)('%s', async (_, patch, pattern) => {
    const request = { tokens: ref.prompt_ids, maxTokens: 4, ...patch } as never;
    expect(() => engine.stream(request)).toThrow(InvalidRequestError);
    expect(() => engine.stream(request)).toThrow(pattern);
    await expect(engine.generate(request)).rejects.toThrow(pattern);
  });

  test('bad chat messages', () => {
    expect(() => engine.applyChatTemplate([{ role: 'robot', content: 'x' } as never])).toThrow(
      /messages\[0\]/,
    );
  });

  // The addon validates again (second line): call it directly, past the TS checks.
  test.each([
    ['token id out of range', { prompt: [1, 5000], maxNewTokens: 4 }],
    ['prompt longer than the context', { prompt: new Array(400).fill(1), maxNewTokens: 4 }],
    ['maxNewTokens 0', { prompt: [1, 2], maxNewTokens: 0 }],
    ['maxNewTokens negative', { prompt: [1, 2], maxNewTokens: -3 }],
    ['empty prompt', { prompt: [], maxNewTokens: 3 }],
    ['non-integer id', { prompt: [1.5], maxNewTokens: 3 }],
  ])('native: %s', (_, request) => {
    const native = loadNative();
    const handle = (engine as unknown as { handle: Parameters<typeof native.submit>[0] }).handle;
    let thrown: unknown;
    try {
      native.submit(handle, request, () => {});
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(Error);
    expect((thrown as Error & { code: string }).code).toBe('SPX_INVALID_REQUEST');
    expect((thrown as Error).message.length).toBeGreaterThan(10);
  });

  test('an aborted signal rejects before the request starts', async () => {
    const signal = AbortSignal.abort();
    await expect(engine.generate({ tokens: ref.prompt_ids, signal })).rejects.toBeInstanceOf(
      RequestAbortedError,
    );
  });

  test('the engine still works after all of that', async () => {
    const r = await engine.generate({ tokens: ref.prompt_ids, maxTokens: 8, stopTokenIds: [] });
    expect(r.tokens).toEqual(ref.generated_ids);
    expect(engine.stats().activeRequests).toBe(0);
  });
});

describe('close', () => {
  test('closing twice is fine; every later call is an EngineClosedError', async () => {
    const engine = await openEngine({ model: path.join(FIXTURES, 'tiny-qwen2'), threads: 1 });
    await engine.close();
    await expect(engine.close()).resolves.toBeUndefined();
    const ids = reference('tiny-qwen2').prompt_ids;
    await expect(engine.generate({ tokens: ids })).rejects.toBeInstanceOf(EngineClosedError);
    await expect(engine.generate({ tokens: ids })).rejects.toThrow(/engine is closed/);
    expect(() => engine.stream({ tokens: ids })).toThrow(EngineClosedError);
    expect(() => engine.stats()).toThrow(EngineClosedError);
    expect(() => engine.tokenize('x')).toThrow(EngineClosedError);
    expect(() => engine.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(
      EngineClosedError,
    );
  });

  test('the native handle refuses calls after close', async () => {
    const engine = await openEngine({ model: path.join(FIXTURES, 'tiny-qwen2'), threads: 1 });
    const native = loadNative();
    const handle = (engine as unknown as { handle: Parameters<typeof native.stats>[0] }).handle;
    await engine.close();
    expect(() => native.stats(handle)).toThrow(/engine is closed/);
    expect(() => native.submit(handle, { prompt: [1], maxNewTokens: 1 }, () => {})).toThrow(
      /engine is closed/,
    );
    await expect(native.close(handle)).resolves.toBeUndefined();
  });

  test('close while requests run ends them as cancelled', async () => {
    const engine = await openEngine({ model: path.join(FIXTURES, 'tiny-llama'), threads: 1 });
    const ids = reference('tiny-llama').prompt_ids;
    const running = [1, 2, 3].map(() =>
      engine.generate({ tokens: ids, maxTokens: 240, stopTokenIds: [] }),
    );
    await engine.close();
    for (const r of await Promise.all(running)) {
      expect(['cancelled', 'length']).toContain(r.stats.finishReason);
    }
  });
});

describe('batching', () => {
  test('5 concurrent requests of different lengths get the same tokens as alone', async () => {
    const engine = await openEngine({
      model: path.join(FIXTURES, 'tiny-llama'),
      threads: 1,
      maxBatch: 8,
    });
    try {
      const text = 'It was the best of times, it was the worst of times, it was the age of wisdom';
      const requests = [5, 11, 23, 37, 60].map((n, i) => ({
        tokens: engine.tokenize(text.slice(0, n)),
        maxTokens: 6 + 7 * i,
        stopTokenIds: [],
      }));
      const alone: number[][] = [];
      for (const r of requests) alone.push((await engine.generate(r)).tokens);
      const together = await Promise.all(requests.map((r) => engine.generate(r)));
      expect(together.map((r) => r.tokens)).toEqual(alone);
      expect(alone.map((t) => t.length)).toEqual(requests.map((r) => r.maxTokens));
      const stats = engine.stats();
      expect(stats.completedRequests).toBe(10);
      expect(stats.activeRequests).toBe(0);
    } finally {
      await engine.close();
    }
  });
});

describe('streaming', () => {
  test('chunks carry every token, and their text adds up to the result', async () => {
    const engine = await openEngine({ model: path.join(FIXTURES, 'tiny-qwen3'), threads: 1 });
    try {
      const stream = engine.stream({ text: 'Hello, world', maxTokens: 20, stopTokenIds: [] });
      const tokens: number[] = [];
      let text = '';
      for await (const chunk of stream) {
        tokens.push(chunk.token);
        text += chunk.text;
      }
      const result = await stream.result;
      expect(tokens).toEqual(result.tokens);
      expect(result.text).toBe(engine.detokenize(result.tokens));
      // Byte tokens may end mid-character; whatever was complete was streamed.
      expect(result.text.startsWith(text.replace(/\uFFFD+$/, ''))).toBe(true);
    } finally {
      await engine.close();
    }
  });

  test('errors are EngineErrors', () => {
    expect(new InvalidRequestError('x')).toBeInstanceOf(EngineError);
  });
});

describe('backends', () => {
  test('the addon lists its compiled backends, cpu always', () => {
    const list = backends();
    expect(list).toContain('cpu');
    expect(list.every((b) => b === 'cpu' || b === 'cuda')).toBe(true);
  });
});
