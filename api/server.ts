// The HTTP API (Fastify, zod schemas, OpenAPI at /docs). Bodies are read as
// bytes and decoded as strict UTF-8 before JSON parsing, so invalid UTF-8 is a
// 400 instead of silently replaced characters. Every refusal is a 4xx with a
// message that names the problem; the server keeps serving.

import { Readable } from 'node:stream';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Client } from '@temporalio/client';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import {
  hasZodFastifySchemaValidationErrors,
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { z } from 'zod';
import { streamJobEvents } from './events';
import { JobRejected, type JobService } from './jobs';
import type { ServiceMetrics } from './metrics';
import { batchLineSchema, describeIssues, jobIdSchema, jobRequestSchema } from './schemas';

export interface ApiDeps {
  jobs: JobService;
  nc: NatsConnection;
  client: Client;
  metrics: ServiceMetrics;
  maxDocumentBytes: number;
  maxBatchBytes: number;
  logger?: boolean;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

class BadRequest extends Error {
  readonly statusCode = 400;
}

function decodeUtf8(body: Buffer): string {
  try {
    return utf8.decode(body);
  } catch {
    throw new BadRequest('request body is not valid UTF-8');
  }
}

const idParams = z.strictObject({ id: jobIdSchema });

const notFound = (reply: FastifyReply, what: string, id: string) =>
  reply.status(404).send({ error: 'not found', message: `no ${what} ${id}` });
const errorBody = z.object({ error: z.string(), message: z.string() });

/** Lines of a JSONL batch; a line that is not a job keeps its reason and fails alone. */
export function parseBatchLines(text: string) {
  return text
    .split('\n')
    .map((raw, n) => ({ raw: raw.trim(), n: n + 1 }))
    .filter((l) => l.raw)
    .map(({ raw, n }) => {
      let json: unknown;
      try {
        json = JSON.parse(raw);
      } catch (err) {
        return {
          customId: `line-${n}`,
          error: `line ${n}: malformed JSON: ${(err as Error).message}`,
        };
      }
      const customId =
        typeof (json as { custom_id?: unknown })?.custom_id === 'string'
          ? (json as { custom_id: string }).custom_id
          : `line-${n}`;
      const r = batchLineSchema.safeParse(json);
      if (!r.success) return { customId, error: `line ${n}: ${describeIssues(r.error)}` };
      const { custom_id, ...job } = r.data;
      return { customId: custom_id, job };
    });
}

export async function buildApi(d: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    logger: d.logger ?? false,
    bodyLimit: d.maxBatchBytes,
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  app.removeContentTypeParser(['application/json', 'text/plain']);
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => {
    try {
      const text = decodeUtf8(body as Buffer);
      if (!text.trim()) throw new BadRequest('request body is empty');
      try {
        done(null, JSON.parse(text));
      } catch (err) {
        throw new BadRequest(`malformed JSON: ${(err as Error).message}`);
      }
    } catch (err) {
      done(err as Error, undefined);
    }
  });
  app.addContentTypeParser(
    ['application/jsonl', 'application/x-ndjson', 'text/plain'],
    { parseAs: 'buffer' },
    (_req, body, done) => {
      try {
        done(null, decodeUtf8(body as Buffer));
      } catch (err) {
        done(err as Error, undefined);
      }
    },
  );

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const via = req.routeOptions.url ?? 'unknown';
    let status = 500;
    let message = err.message;
    if (hasZodFastifySchemaValidationErrors(err)) {
      status = 400;
      message = err.validation
        .map(
          (v) =>
            `${[err.validationContext ?? 'body', ...v.instancePath.split('/').filter(Boolean)].join('.')}: ${v.message}`,
        )
        .join('; ');
    } else if (err instanceof JobRejected) {
      status = err.status;
    } else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      status = 413;
      message = `request body is larger than the ${req.routeOptions.bodyLimit ?? d.maxBatchBytes} bytes allowed`;
    } else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      status = 415;
      message = `unsupported content type ${JSON.stringify(req.headers['content-type'] ?? '')}`;
    } else if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
      status = 400;
      message = 'request body is empty';
    } else if (
      typeof err.statusCode === 'number' &&
      err.statusCode >= 400 &&
      err.statusCode < 500
    ) {
      status = err.statusCode;
    }
    if (status >= 500) req.log.error(err);
    else d.metrics.rejected.inc({ via, reason: String(status) });
    reply
      .status(status)
      .send({ error: status >= 500 ? 'internal error' : 'invalid request', message });
  });

  await app.register(swagger, {
    openapi: {
      info: {
        title: 'specontext',
        description:
          'Long-document reasoning jobs: submit documents and instructions, read answers',
        version: '0.1.0',
      },
    },
    transform: jsonSchemaTransform,
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  app.post(
    '/v1/jobs',
    {
      bodyLimit: d.maxDocumentBytes + 256 * 1024,
      schema: {
        description: 'Submit a job; the same idempotencyKey always gives the same job',
        body: jobRequestSchema,
        response: { 202: z.object({ id: z.string(), created: z.boolean() }), '4xx': errorBody },
      },
    },
    async (req, reply) => {
      const r = await d.jobs.submit(req.body);
      if (r.created) d.metrics.submitted.inc({ via: 'http' });
      return reply.status(202).send(r);
    },
  );

  app.get('/v1/jobs/:id', { schema: { params: idParams } }, async (req, reply) => {
    const view = await d.jobs.get(req.params.id);
    if (!view) return notFound(reply, 'job', req.params.id);
    return view;
  });

  app.post('/v1/jobs/:id/cancel', { schema: { params: idParams } }, async (req, reply) => {
    const view = await d.jobs.cancel(req.params.id);
    if (!view) return notFound(reply, 'job', req.params.id);
    return reply.status(202).send(view);
  });

  app.get('/v1/jobs/:id/events', { schema: { params: idParams } }, async (req, reply) => {
    const view = await d.jobs.get(req.params.id);
    if (!view) return notFound(reply, 'job', req.params.id);
    await streamJobEvents(d.nc, view, reply);
  });

  app.post(
    '/v1/batches',
    {
      schema: {
        description:
          'Submit a batch: JSONL, one job per line with a custom_id (content type application/jsonl)',
        body: z.string(),
      },
    },
    async (req, reply) => {
      const lines = parseBatchLines(req.body);
      const r = await d.jobs.submitBatch(lines);
      d.metrics.submitted.inc({ via: 'batch' }, r.total - r.invalid);
      const view = await d.jobs.getBatch(r.id);
      return reply.status(202).send({ ...view, invalid_lines: r.invalid });
    },
  );

  app.get('/v1/batches/:id', { schema: { params: idParams } }, async (req, reply) => {
    const view = await d.jobs.getBatch(req.params.id);
    if (!view) return notFound(reply, 'batch', req.params.id);
    return view;
  });

  app.post('/v1/batches/:id/cancel', { schema: { params: idParams } }, async (req, reply) => {
    const view = await d.jobs.cancelBatch(req.params.id);
    if (!view) return notFound(reply, 'batch', req.params.id);
    return reply.status(202).send(view);
  });

  app.get('/v1/batches/:id/results', { schema: { params: idParams } }, async (req, reply) => {
    const view = await d.jobs.getBatch(req.params.id);
    if (!view) return notFound(reply, 'batch', req.params.id);
    const lines = d.jobs.batchResults(req.params.id);
    const body = Readable.from(
      (async function* () {
        for await (const line of lines) yield `${line}\n`;
      })(),
    );
    return reply.type('application/jsonl').send(body);
  });

  app.get('/healthz', async () => ({ ok: true }));

  app.get('/readyz', async (_req, reply) => {
    const problems: string[] = [];
    if (d.nc.isClosed()) problems.push('NATS connection is closed');
    try {
      await d.client.connection.withDeadline(Date.now() + 2_000, () =>
        d.client.workflowService.getSystemInfo({}),
      );
    } catch (err) {
      problems.push(`Temporal unreachable: ${(err as Error).message}`);
    }
    if (problems.length) return reply.status(503).send({ ready: false, problems });
    return { ready: true };
  });

  app.get('/metrics', async (_req, reply) => {
    reply.type(d.metrics.registry.contentType);
    return d.metrics.registry.metrics();
  });

  return app;
}
