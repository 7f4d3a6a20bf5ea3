// Refusals at the edge, on the real API and NATS intake (real Temporal and NATS
// of the test stack; no worker is needed: nothing bad may reach one). Each
// malformed input class gets a 4xx with a message naming the problem over
// HTTP, or is dead-lettered with the reason over NATS; the service keeps
// serving and still accepts a good job afterwards.
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { Client, Connection } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningApi, startApi } from '../api';
import { connectNats } from '../nats/connection';
import { DEADLETTER_STREAM, REASON_HEADER, SUBMIT_SUBJECT } from '../nats/subjects';
import { testServiceConfig, waitFor } from './service-helpers';

const config = testServiceConfig('api', { SPECONTEXT_MAX_DOCUMENT_BYTES: '200000' });
let api: RunningApi;
let nc: NatsConnection;
let connection: Connection;
let client: Client;

beforeAll(async () => {
  api = await startApi(config, { port: 0 });
  nc = await connectNats(config.nats.url, 'api-test');
  connection = await Connection.connect({ address: config.temporal.address });
  client = new Client({ connection, namespace: config.temporal.namespace });
});

afterAll(async () => {
  await api?.stop();
  await nc?.drain();
  await connection?.close();
});

const good = {
  document: 'Maria lives in Lisbon. Her favourite colour is green.',
  instructions: ["What is Maria's favourite colour?"],
  options: { maxTokens: 8 },
};
const longDocument = 'The sea is wide and the sky is blue. '.repeat(1200); // ~10k tokens, 44 KB

async function send(body: string | Uint8Array, type = 'application/json', path = '/v1/jobs') {
  const r = await fetch(`${api.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': type },
    body,
  });
  return { status: r.status, body: (await r.json()) as { message?: string; id?: string } };
}

/** JSON text with a byte sequence that is not UTF-8 inside the document string. */
function invalidUtf8(): Uint8Array {
  const [head, tail] = JSON.stringify({ ...good, document: 'X' }).split('"X"') as [string, string];
  return Buffer.concat([
    Buffer.from(`${head}"bad `),
    Buffer.from([0xc3, 0x28, 0xff]),
    Buffer.from(`"${tail}`),
  ]);
}

const cases: [string, string | Uint8Array, number, RegExp][] = [
  ['malformed JSON', '{"document": "abc", ', 400, /malformed JSON/],
  [
    'wrong types',
    JSON.stringify({ document: 42, instructions: 'q' }),
    400,
    /document.*string|instructions/,
  ],
  [
    'wrong option type',
    JSON.stringify({ ...good, options: { maxTokens: 'ten' } }),
    400,
    /maxTokens/,
  ],
  ['empty document', JSON.stringify({ ...good, document: '' }), 400, /document is empty/],
  ['blank document', JSON.stringify({ ...good, document: '  \n ' }), 400, /document is empty/],
  [
    'no instructions',
    JSON.stringify({ ...good, instructions: [] }),
    400,
    /at least one instruction/,
  ],
  ['unknown field', JSON.stringify({ ...good, max_tokens: 5 }), 400, /max_tokens/],
  ['unknown option', JSON.stringify({ ...good, options: { maxTokens: 5, temp: 1 } }), 400, /temp/],
  [
    'budget and full',
    JSON.stringify({ ...good, options: { budget: 64, full: true } }),
    400,
    /not both/,
  ],
  [
    'longer than the context',
    JSON.stringify({ ...good, document: longDocument }),
    413,
    /tokens but at most \d+ fit/,
  ],
  [
    'larger than the byte limit',
    JSON.stringify({ ...good, document: 'x'.repeat(600_000) }),
    413,
    /larger than/,
  ],
  ['invalid UTF-8', invalidUtf8(), 400, /not valid UTF-8/],
  ['empty body', '', 400, /empty/],
];

describe('HTTP refusals', () => {
  for (const [name, body, status, message] of cases) {
    it(`${name} -> ${status}`, async () => {
      const r = await send(body);
      expect(r.status).toBe(status);
      expect(r.body.message).toMatch(message);
    });
  }

  it('unsupported content type -> 415', async () => {
    const r = await send('<xml/>', 'application/xml');
    expect(r.status).toBe(415);
  });

  it('bad and unknown ids -> 400 and 404', async () => {
    expect((await fetch(`${api.url}/v1/jobs/bad.id`)).status).toBe(400);
    expect((await fetch(`${api.url}/v1/jobs/job-none`)).status).toBe(404);
    expect((await fetch(`${api.url}/v1/batches/batch-none`)).status).toBe(404);
  });

  it('batch refusals: empty, invalid UTF-8', async () => {
    expect((await send('\n\n', 'application/jsonl', '/v1/batches')).status).toBe(400);
    const bad = await send(Buffer.from([0x7b, 0xff, 0x7d]), 'application/jsonl', '/v1/batches');
    expect(bad.status).toBe(400);
    expect(bad.body.message).toMatch(/not valid UTF-8/);
  });

  it('a document longer than the context is accepted when truncation is asked', async () => {
    const r = await send(
      JSON.stringify({ ...good, document: longDocument, truncation: 'keep_end' }),
    );
    expect(r.status).toBe(202);
    await client.workflow.getHandle(r.body.id as string).terminate('test cleanup');
  });

  it('keeps serving: health, readiness, docs, metrics, and a good job is accepted', async () => {
    expect((await fetch(`${api.url}/healthz`)).status).toBe(200);
    expect(await (await fetch(`${api.url}/readyz`)).json()).toEqual({ ready: true });
    const spec = (await (await fetch(`${api.url}/docs/json`)).json()) as {
      paths: Record<string, unknown>;
    };
    expect(Object.keys(spec.paths)).toEqual(expect.arrayContaining(['/v1/jobs', '/v1/batches']));
    const r = await send(JSON.stringify(good));
    expect(r.status).toBe(202);
    const desc = await client.workflow.getHandle(r.body.id as string).describe();
    expect(desc.status.name).toBe('RUNNING');
    await client.workflow.getHandle(r.body.id as string).terminate('test cleanup');
    const metrics = await (await fetch(`${api.url}/metrics`)).text();
    expect(metrics).toMatch(
      /specontext_requests_rejected_total\{via="\/v1\/jobs",reason="400"\} \d+/,
    );
    expect(metrics).toMatch(/specontext_jobs\{state="running"\}/);
  });
});

describe('NATS refusals', () => {
  it('dead-letters each malformed message with its reason, then still starts a good job', async () => {
    const js = jetstream(nc);
    const run = `${process.pid}`;
    const natsCases: [string, string | Uint8Array, RegExp][] = [
      ['malformed', '{"document": ', /malformed JSON/],
      ['types', JSON.stringify({ document: 1, instructions: ['q'] }), /document/],
      ['empty', JSON.stringify({ ...good, document: '' }), /document is empty/],
      ['unknown', JSON.stringify({ ...good, colour: 'red' }), /colour/],
      ['utf8', invalidUtf8(), /not valid UTF-8/],
      ['long', JSON.stringify({ ...good, document: longDocument }), /tokens but at most \d+ fit/],
      ['badid', JSON.stringify({ ...good, id: 'a.b' }), /id/],
    ];
    for (const [name, body] of natsCases)
      await js.publish(SUBMIT_SUBJECT, body, { msgID: `${run}-${name}` });
    const goodId = `nats-good-${run}`;
    await js.publish(SUBMIT_SUBJECT, JSON.stringify({ ...good, id: goodId }), {
      msgID: `${run}-good`,
    });

    const reasons = await waitFor('dead letters', async () => {
      const consumer = await js.consumers.get(DEADLETTER_STREAM, {
        deliver_policy: DeliverPolicy.All,
      });
      const got = new Map<string, string>();
      for (;;) {
        const m = await consumer.next({ expires: 1_000 });
        if (!m) break;
        got.set(m.headers?.get('Nats-Msg-Id') ?? '', m.headers?.get(REASON_HEADER) ?? '');
      }
      return natsCases.every(([n]) => got.has(`deadletter.${run}-${n}`)) && got;
    });
    for (const [name, , reason] of natsCases)
      expect(reasons.get(`deadletter.${run}-${name}`)).toMatch(reason);

    const desc = await waitFor('good job', () =>
      client.workflow
        .getHandle(goodId)
        .describe()
        .catch(() => undefined),
    );
    expect(desc.type).toBe('documentJobWorkflow');
    await client.workflow.getHandle(goodId).terminate('test cleanup');
  });
});
