// `specontext generate`: one chat-templated generation through the engine's
// TypeScript API, streamed to stdout (or one JSON object with --json).
// `specontext bench-cpu` runs the CPU benchmark of bench/cpu.
import { readFileSync } from 'node:fs';
import { type Command, InvalidArgumentError } from 'commander';
import type { CpuBenchOptions } from '../bench/cpu/run';
import { type ChatMessage, type Device, openEngine } from '../engine';
import { fallbackArg } from './sparse';

export const DEFAULT_MODEL_DIR = 'models/smollm2-135m-instruct';

interface GenerateFlags {
  model: string;
  prompt?: string;
  promptFile?: string;
  system?: string;
  maxTokens: number;
  temperature: number;
  seed?: number;
  topK?: number;
  topP?: number;
  threads?: number;
  device: string;
  budget?: number;
  full?: boolean;
  dlm?: string;
  dlmLayers?: number;
  fallback?: number;
  json?: boolean;
}

function intArg(min: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^-?\d+$/.test(value.trim()) || n < min) {
      throw new InvalidArgumentError(`expected an integer >= ${min}`);
    }
    return n;
  };
}

function floatArg(min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected a number in [${min}, ${max}]`);
    }
    return n;
  };
}

async function generate(flags: GenerateFlags): Promise<void> {
  if ((flags.prompt === undefined) === (flags.promptFile === undefined)) {
    throw new Error('give exactly one of --prompt TEXT or --prompt-file FILE');
  }
  const prompt = flags.prompt ?? readFileSync(flags.promptFile as string, 'utf8');
  const messages: ChatMessage[] = [];
  if (flags.system !== undefined) messages.push({ role: 'system', content: flags.system });
  messages.push({ role: 'user', content: prompt });

  const engine = await openEngine({
    model: flags.model,
    device: flags.device as Device,
    threads: flags.threads,
    maxBatch: 1,
    dlm: flags.dlm,
    dlmLayers: flags.dlmLayers,
    fallback: flags.fallback,
  });
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  try {
    const stream = engine.stream({
      messages,
      maxTokens: flags.maxTokens,
      temperature: flags.temperature,
      seed: flags.seed,
      topK: flags.topK,
      topP: flags.topP,
      budget: flags.full ? 0 : flags.budget,
      signal: controller.signal,
    });
    if (!flags.json) {
      for await (const chunk of stream) process.stdout.write(chunk.text);
      process.stdout.write('\n');
    }
    const result = await stream.result;
    const stats = engine.stats();
    if (flags.json) {
      process.stdout.write(
        `${JSON.stringify({
          text: result.text,
          tokens: result.tokens,
          promptTokens: result.promptTokens,
          stats: {
            ...result.stats,
            threads: stats.threads,
            device: stats.device,
            // SpeContext counters (engine totals; this command runs one request).
            sparseSteps: stats.sparseSteps,
            fullSteps: stats.fullSteps,
            fallbackSteps: stats.fallbackSteps,
            hostLayers: stats.hostLayers,
            elasticLoads: stats.elasticLoads,
            elasticBytes: stats.elasticBytes,
            reloadFraction: stats.reloadFraction,
          },
        })}\n`,
      );
    } else {
      const s = result.stats;
      process.stderr.write(
        `[${s.promptTokens} prompt tokens at ${s.prefillTokensPerS.toFixed(1)} tok/s, ` +
          `${s.generatedTokens} generated at ${s.decodeTokensPerS.toFixed(1)} tok/s, ` +
          `${s.finishReason}, ${stats.threads} threads]\n`,
      );
    }
  } finally {
    process.off('SIGINT', onSigint);
    await engine.close();
  }
}

export function registerGenerateCommands(program: Command): void {
  program
    .command('generate')
    .description('apply the chat template to a prompt and stream the model answer to stdout')
    .option('--model <dir>', 'model directory (Hugging Face layout)', DEFAULT_MODEL_DIR)
    .option('--prompt <text>', 'the user message')
    .option('--prompt-file <file>', 'read the user message from a file')
    .option('--system <text>', 'a system message')
    .option('--max-tokens <n>', 'new tokens at most', intArg(1), 256)
    .option('--temperature <t>', '0: greedy', floatArg(0, 100), 0)
    .option('--seed <s>', 'sampling seed', intArg(0))
    .option('--top-k <k>', '0: off', intArg(0))
    .option('--top-p <p>', '1: off', floatArg(0, 1))
    .option('--threads <n>', '0: all cores', intArg(0))
    .option('--device <d>', 'cpu or cuda:N', 'cpu')
    .option('--budget <b>', 'sparse KV budget (SpeContext); 0: full attention', intArg(0))
    .option('--full', 'full attention (ignores --budget)')
    .option(
      '--dlm <dir>',
      'retrieval head: a distilled model sharing the tokenizer (default: the recommended head)',
    )
    .option('--dlm-layers <k>', "retrieval head: the target's first k layers", intArg(1))
    .option(
      '--fallback <mass>',
      "full attention on a step whose selection carries less of the head's mass (default: the head's recommendation; 0: never)",
      fallbackArg,
    )
    .option('--json', 'print one JSON object {text, tokens, promptTokens, stats}')
    .action(generate);

  const list = (v: string) => v.split(',').map((x) => intArg(1)(x));
  program
    .command('bench-cpu')
    .description('CPU prefill/decode tokens/s for SmolLM2-135M, ours beside node-llama-cpp')
    .option('--model <dir>', 'model directory', DEFAULT_MODEL_DIR)
    .option(
      '--gguf <file>',
      'the GGUF for node-llama-cpp (default: found in the model dir or .venv)',
    )
    .option('--contexts <list>', 'prompt lengths in tokens', list, [512, 4096])
    .option('--requests <list>', 'concurrent requests', list, [1, 8])
    .option('--threads <n>', 'threads for both engines (default: all cores)', intArg(1))
    .option('--out <file>', 'result JSON (default bench/results/cpu-smollm2.json)')
    .action(async (flags: CpuBenchOptions) => {
      const { runCpuBench } = await import('../bench/cpu/run');
      await runCpuBench(flags);
    });
}
