// The job schema, in one place: the HTTP API, the NATS intake and the CLI all
// validate with it. Unknown fields are rejected everywhere (strict objects), so
// a typo ("max_tokens") is an error instead of a silently ignored option.
import { z } from 'zod';

/** Job ids appear in NATS subjects (`jobs.events.<id>`): no dots, spaces or wildcards. */
export const jobIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, "-" and "_" only');

export const generationOptionsSchema = z
  .strictObject({
    maxTokens: z.number().int().min(1).max(32768).default(256),
    temperature: z.number().min(0).max(2).default(0),
    topP: z.number().gt(0).max(1).optional(),
    topK: z.number().int().min(1).optional(),
    seed: z
      .number()
      .int()
      .min(0)
      .max(2 ** 32 - 1)
      .default(0),
    /** Sparse attention with this KV budget (tokens per head). */
    budget: z.number().int().min(1).optional(),
    /** Full attention; the default when no budget is given. */
    full: z.boolean().optional(),
  })
  .refine((o) => !(o.full && o.budget !== undefined), {
    message: 'give either budget (sparse attention) or full: true, not both',
  });

export const truncationSchema = z
  .enum(['reject', 'keep_start', 'keep_end'])
  .describe(
    'What to do with a document longer than the model context: reject it, or keep its start or end',
  );

const nonBlank = (what: string) =>
  z
    .string({ error: `${what} must be a string` })
    .refine((s) => s.trim().length > 0, `${what} is empty (or only whitespace)`);

export const jobRequestShape = {
  document: nonBlank('document'),
  instructions: z
    .array(nonBlank('instruction').pipe(z.string().max(16_000, 'instruction is too long')))
    .min(1, 'at least one instruction is needed')
    .max(64, 'at most 64 instructions per job'),
  options: generationOptionsSchema.default({ maxTokens: 256, temperature: 0, seed: 0 }),
  idempotencyKey: z.string().min(1).max(256).optional(),
  truncation: truncationSchema.default('reject'),
};

export const jobRequestSchema = z.strictObject(jobRequestShape);
export type JobRequest = z.output<typeof jobRequestSchema>;

/** A job message on `jobs.submit`: the same job, optionally naming its id. */
export const jobMessageSchema = z.strictObject({ ...jobRequestShape, id: jobIdSchema.optional() });
export type JobMessage = z.output<typeof jobMessageSchema>;

/** One line of a batch file: a job keyed by the caller's custom_id. */
export const batchLineSchema = z.strictObject({
  custom_id: z.string().min(1).max(256),
  ...jobRequestShape,
});
export type BatchLine = z.output<typeof batchLineSchema>;

export const jobStatusSchema = z.enum(['queued', 'running', 'completed', 'failed', 'cancelled']);

export const resultStatsSchema = z.looseObject({
  promptTokens: z.number(),
  generatedTokens: z.number(),
  prefillMs: z.number(),
  decodeMs: z.number(),
  decodeTokensPerS: z.number(),
  finishReason: z.string(),
});

export const jobViewSchema = z.object({
  id: z.string(),
  status: jobStatusSchema,
  progress: z.looseObject({
    stage: z.string(),
    instructions: z.array(
      z.object({ tokensDone: z.number(), maxTokens: z.number(), done: z.boolean() }),
    ),
  }),
  results: z
    .array(z.object({ instruction: z.string(), text: z.string(), stats: resultStatsSchema }))
    .optional(),
  error: z.string().optional(),
});
export type JobView = z.output<typeof jobViewSchema>;

export const batchViewSchema = z.object({
  id: z.string(),
  status: z.enum(['running', 'completed', 'cancelled', 'failed']),
  request_counts: z.object({
    total: z.number(),
    completed: z.number(),
    failed: z.number(),
    cancelled: z.number(),
    running: z.number(),
  }),
  error: z.string().optional(),
});
export type BatchView = z.output<typeof batchViewSchema>;

/** A readable one-line summary of a zod error: "options.maxTokens: expected number, got string". */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => {
      const where = i.path.length ? i.path.join('.') : 'body';
      return `${where}: ${i.message}`;
    })
    .join('; ');
}
