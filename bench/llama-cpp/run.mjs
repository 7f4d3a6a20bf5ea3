// node-llama-cpp side of the CPU benchmark, run as a child process of
// bench/cpu/run.ts so each engine gets the machine to itself.
//
//   node bench/llama-cpp/run.mjs --gguf FILE --prompts FILE.json --gen N [--threads N]
//
// prompts.json is an array of token-id arrays (the same ids our engine gets;
// the GGUF carries the same vocabulary). All prompts run concurrently, one
// sequence each, so llama.cpp batches them. Prints one JSON object.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const { values } = parseArgs({
  options: {
    gguf: { type: 'string' },
    prompts: { type: 'string' },
    gen: { type: 'string', default: '32' },
    threads: { type: 'string', default: '0' },
  },
});
const prompts = JSON.parse(readFileSync(values.prompts, 'utf8'));
const gen = Number(values.gen);
const threads = Number(values.threads);

// CPU only, prebuilt only: never build from source, never download.
const llama = await getLlama({
  gpu: false,
  build: 'never',
  usePrebuiltBinaries: true,
  skipDownload: true,
  progressLogs: false,
  logLevel: LlamaLogLevel.error,
  maxThreads: threads,
});
const model = await llama.loadModel({ modelPath: values.gguf, gpuLayers: 0 });
const longest = Math.max(...prompts.map((p) => p.length));
const context = await model.createContext({
  contextSize: longest + gen + 16,
  sequences: prompts.length,
  batchSize: 512,
  threads,
  flashAttention: false,
});

async function one(sequence, tokens, start) {
  const times = [];
  const out = [];
  for await (const token of sequence.evaluate(tokens, { temperature: 0 })) {
    times.push(performance.now() - start);
    out.push(token);
    if (out.length >= gen) break;
  }
  return { promptTokens: tokens.length, tokens: out, times };
}

const sequences = prompts.map(() => context.getSequence());
const start = performance.now();
const runs = await Promise.all(prompts.map((p, i) => one(sequences[i], p, start)));
const end = performance.now();

process.stdout.write(
  `${JSON.stringify({
    engine: 'node-llama-cpp',
    version: '3.21.1',
    gpu: llama.gpu,
    buildType: llama.buildType,
    threads: context.currentThreads,
    runs: runs.map((r) => ({ promptTokens: r.promptTokens, tokens: r.tokens, times: r.times })),
    wallMs: end - start,
  })}\n`,
);
await context.dispose();
await model.dispose();
await llama.dispose();
