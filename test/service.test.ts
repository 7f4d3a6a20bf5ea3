// The job service end to end, on real parts: the isolated Temporal dev server
// and NATS of the test stack, the real worker with the real engine and the
// SmolLM2 model on the CPU, the real HTTP API and NATS intake. Documents are
// short and answers few tokens, so the CPU keeps up.
import { jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningApi, startApi } from '../api';
import type { JobView } from '../api/jobs';
import { openEngine } from '../engine';
import type { Engine } from '../engine/types';
import { connectNats } from '../nats/connection';
import { SUBMIT_SUBJECT } from '../nats/subjects';
import { type RunningWorker, startWorker } from '../worker/worker';
import { storedEvents, testServiceConfig, waitFor } from './service-helpers';

const config = testServiceConfig('svc');
let engine: Engine;
let worker: RunningWorker;
let api: RunningApi;
let nc: NatsConnection;

beforeAll(async () => {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  engine = await openEngine({ model: config.engine.model, maxBatch: 4, threads: 2 });
  worker = await startWorker(config, { engine, shutdownGraceS: 1 });
  api = await startApi(config, { port: 0 });
  nc = await connectNats(config.nats.url, 'svc-test');
});

afterAll(async () => {
  await api?.stop();
  await worker?.stop();
  await engine?.close();
  await nc?.drain();
});

const http = (path: string, init?: RequestInit) => fetch(`${api.url}${path}`, init);
const post = (path: string, body: unknown) =>
  http(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

async function finished(id: string): Promise<JobView> {
  return waitFor(`job ${id}`, async () => {
    const r = await http(`/v1/jobs/${id}`);
    const v = (await r.json()) as JobView;
    return ['completed', 'failed', 'cancelled'].includes(v.status) && v;
  });
}

const FACTS = {
  document:
    'Maria lives in Lisbon and works as a baker. Her favourite colour is green. She has two cats named Pixel and Dot.',
  question: "What is Maria's favourite colour?",
  answer: /green/i,
};

describe('jobs over HTTP', () => {
  it('answers a question whose answer is in the document, with stats', async () => {
    const r = await post('/v1/jobs', {
      document: FACTS.document,
      instructions: [FACTS.question],
      options: { maxTokens: 10, temperature: 0 },
    });
    expect(r.status).toBe(202);
    const { id } = (await r.json()) as { id: string };

    const events = fetch(`${api.url}/v1/jobs/${id}/events`).then((res) => res.text());
    const view = await finished(id);
    expect(view.status).toBe('completed');
    expect(view.results).toHaveLength(1);
    const [result] = view.results ?? [];
    expect(result?.instruction).toBe(FACTS.question);
    expect(result?.text).toMatch(FACTS.answer);
    expect(result?.stats.generatedTokens).toBeGreaterThan(0);
    expect(result?.stats.promptTokens).toBeGreaterThan(20);
    expect(result?.stats.attention).toBe('full');

    // SSE: the status snapshot, the streamed text, then the completion.
    const sse = await events;
    expect(sse).toContain('event: status');
    expect(sse).toContain('event: completed');
    const streamed = [...sse.matchAll(/event: progress\ndata: (.*)\n/g)]
      .map((m) => (JSON.parse(m[1] as string) as { text?: string }).text ?? '')
      .join('');
    expect(streamed).toBe(result?.text);
  });

  it('is idempotent on the key: the same key gives the same job', async () => {
    const body = {
      document: FACTS.document,
      instructions: [FACTS.question],
      options: { maxTokens: 10, temperature: 0 },
      idempotencyKey: `key-${process.pid}`,
    };
    const a = (await (await post('/v1/jobs', body)).json()) as { id: string; created: boolean };
    const b = (await (await post('/v1/jobs', body)).json()) as { id: string; created: boolean };
    expect(b.id).toBe(a.id);
    expect([a.created, b.created]).toEqual([true, false]);
    const view = await finished(a.id);
    expect(view.results?.[0]?.text).toMatch(FACTS.answer);
    const again = (await (await post('/v1/jobs', body)).json()) as { id: string; created: boolean };
    expect(again).toEqual({ id: a.id, created: false });
  });
});

describe('jobs over NATS', () => {
  it('completes a job from jobs.submit; the same message twice makes one job and one result event', async () => {
    const js = jetstream(nc);
    const id = `nats-job-${process.pid}`;
    const msg = JSON.stringify({
      id,
      document:
        'Report: the warehouse in Oslo stores 4200 crates of apples. The manager is Ingrid Holm.',
      instructions: ['Who is the manager of the warehouse?'],
      options: { maxTokens: 12, temperature: 0 },
    });
    const first = await js.publish(SUBMIT_SUBJECT, msg, { msgID: `m-${id}` });
    const second = await js.publish(SUBMIT_SUBJECT, msg, { msgID: `m-${id}` });
    expect(second.duplicate).toBe(true);
    expect(second.seq).toBe(first.seq);
    // A redelivery (another message id, same job id) finds the workflow already there.
    await js.publish(SUBMIT_SUBJECT, msg, { msgID: `m-${id}-again` });

    const done = await waitFor('completion event', async () => {
      const events = await storedEvents(nc, id);
      return events.some((e) => e.type === 'completed') && events;
    });
    const view = await finished(id);
    expect(view.results?.[0]?.text).toMatch(/ingrid/i);
    // Wait for the third message to be processed, then count.
    await new Promise((r) => setTimeout(r, 1_500));
    const events = await storedEvents(nc, id);
    expect(events.filter((e) => e.type === 'completed')).toHaveLength(1);
    expect(done.filter((e) => e.type === 'completed')).toHaveLength(1);
    const runs = await worker.engine.stats();
    expect(runs.activeRequests).toBe(0);
    const connection = await Connection.connect({ address: config.temporal.address });
    const client = new Client({ connection, namespace: config.temporal.namespace });
    const count = await client.workflow.count(`WorkflowId = "${id}"`);
    await connection.close();
    expect(count.count).toBe(1);
  });
});

describe('cancel', () => {
  it('cancels mid-generation: the job ends cancelled, the engine request is freed, no result', async () => {
    const before = engine.stats().cancelledRequests;
    const r = await post('/v1/jobs', {
      document: 'A short note about the sea. The sea is large and blue.',
      instructions: ['Write a very long poem about the sea, at least forty lines.'],
      options: { maxTokens: 400, temperature: 0 },
    });
    const { id } = (await r.json()) as { id: string };
    await waitFor('tokens to stream', async () => {
      const v = (await (await http(`/v1/jobs/${id}`)).json()) as JobView;
      return (v.progress.instructions[0]?.tokensDone ?? 0) >= 2 && v;
    });
    const c = await http(`/v1/jobs/${id}/cancel`, { method: 'POST' });
    expect(c.status).toBe(202);
    const view = await finished(id);
    expect(view.status).toBe('cancelled');
    expect(view.results).toBeUndefined();
    const stats = engine.stats();
    expect(stats.activeRequests).toBe(0);
    expect(stats.cancelledRequests).toBe(before + 1);
    const events = (await storedEvents(nc, id)).map((e) => e.type);
    expect(events).toContain('cancelled');
    expect(events).not.toContain('completed');
  });
});

describe('batches', () => {
  it('runs 20 documents; one bad line fails alone; results are keyed by custom_id', async () => {
    const names = [
      'Anna',
      'Boris',
      'Chen',
      'Dara',
      'Emil',
      'Fatima',
      'Gus',
      'Hana',
      'Ivo',
      'Jules',
    ];
    const cities = [
      'Paris',
      'Rome',
      'Tokyo',
      'Cairo',
      'Lima',
      'Oslo',
      'Quito',
      'Seoul',
      'Dublin',
      'Accra',
    ];
    const lines = Array.from({ length: 20 }, (_, i) => {
      if (i === 7) return '{"custom_id": "doc-7", "document": "broken line';
      const name = names[i % 10];
      const city = cities[(i * 3) % 10];
      return JSON.stringify({
        custom_id: `doc-${i}`,
        document: `${name} was born in ${city}.`,
        instructions: [`Where was ${name} born?`],
        options: { maxTokens: 4, temperature: 0 },
      });
    });
    const r = await http('/v1/batches', {
      method: 'POST',
      headers: { 'content-type': 'application/jsonl' },
      body: `${lines.join('\n')}\n`,
    });
    expect(r.status).toBe(202);
    const batch = (await r.json()) as { id: string; invalid_lines: number };
    expect(batch.invalid_lines).toBe(1);

    const view = await waitFor(
      'batch',
      async () => {
        const v = (await (await http(`/v1/batches/${batch.id}`)).json()) as {
          status: string;
          request_counts: Record<string, number>;
        };
        return v.status !== 'running' && v;
      },
      300_000,
      1_000,
    );
    expect(view.status).toBe('completed');
    expect(view.request_counts).toMatchObject({
      total: 20,
      completed: 19,
      failed: 1,
      cancelled: 0,
    });

    const text = await (await http(`/v1/batches/${batch.id}/results`)).text();
    const results = text
      .trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as {
            custom_id: string;
            status: string;
            results?: { text: string }[];
            error?: string;
          },
      );
    expect(results).toHaveLength(20);
    // The broken line's custom_id cannot be read: it is named after its line.
    const ids = Array.from({ length: 20 }, (_, i) => (i === 7 ? 'line-8' : `doc-${i}`));
    expect(results.map((l) => l.custom_id)).toEqual(ids);
    const bad = results.filter((l) => l.status !== 'completed');
    expect(bad.map((l) => l.custom_id)).toEqual(['line-8']);
    expect(bad[0]?.error).toMatch(/line 8: malformed JSON/);
    for (const l of results.filter((x) => x.status === 'completed')) {
      expect(l.results?.[0]?.text.length).toBeGreaterThan(0);
    }
  }, 330_000);
});

describe('metrics', () => {
  it('exports jobs by state, and each worker engine occupancy and tokens/s', async () => {
    const text = await waitFor(
      'worker stats in /metrics',
      async () => {
        const t = await (await http('/metrics')).text();
        return /specontext_tokens_per_second\{host="[^"]+",device="cpu"\}/.test(t) && t;
      },
      30_000,
      1_000,
    );
    expect(text).toMatch(/specontext_jobs\{state="completed"\} [1-9]/);
    expect(text).toMatch(/specontext_engine_batch_occupancy\{host="[^"]+",device="cpu"\} [0-9.]+/);
    expect(text).toMatch(/specontext_generated_tokens\{host="[^"]+",device="cpu"\} [1-9]/);
    expect(text).toMatch(/specontext_queue_depth \d+/);
  });
});

describe('worker shutdown', () => {
  it('hands in-flight generation back: another worker finishes the job and records the resume', async () => {
    const r = await post('/v1/jobs', {
      document: FACTS.document,
      instructions: [`${FACTS.question} Then describe Maria's day in detail.`],
      // Long enough that an idle machine is still generating when the worker
      // stops (40 tokens took about 1 s, within the shutdown grace).
      options: { maxTokens: 200, temperature: 0 },
    });
    const { id } = (await r.json()) as { id: string };
    await waitFor('tokens to stream', async () => {
      const v = (await (await http(`/v1/jobs/${id}`)).json()) as JobView;
      return (v.progress.instructions[0]?.tokensDone ?? 0) >= 2 && v;
    });
    await worker.stop(); // grace 1 s, then the activity is cancelled and handed back
    expect(engine.stats().activeRequests).toBe(0);
    worker = await startWorker(config, { engine, shutdownGraceS: 1 });
    const view = await finished(id);
    expect(view.status).toBe('completed');
    // Shutdown checkpoints the request first (docs/checkpoints.md): the new
    // worker restores it instead of recomputing.
    expect(view.results?.[0]?.stats).toMatchObject({ resumes: 1, resumedFrom: 'checkpoint' });
    const stats = view.results?.[0]?.stats;
    expect(stats?.tokensRecomputed).toBeLessThan(stats?.generatedTokens ?? 0);
    expect(view.results?.[0]?.text).toMatch(FACTS.answer);
  }, 180_000);
});
