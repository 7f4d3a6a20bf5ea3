// One validated configuration, read from environment variables with defaults.
// Each concern declares its section with `section()`; a bad value is a clear
// error at start that names the variable.
import { z } from 'zod';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Shape = Record<string, z.ZodType>;

/**
 * Parses `env` against `shape`, where each key is the environment variable's
 * name. Returns the parsed values keyed the same way.
 */
export function section<S extends Shape>(
  shape: S,
  env: NodeJS.ProcessEnv = process.env,
): { [K in keyof S]: z.output<S[K]> } {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [name, schema] of Object.entries(shape)) {
    const raw = env[name];
    const r = schema.safeParse(raw === '' ? undefined : raw);
    if (r.success) out[name] = r.data;
    else
      problems.push(
        `${name}=${JSON.stringify(raw)}: ${r.error.issues.map((i) => i.message).join('; ')}`,
      );
  }
  if (problems.length) throw new ConfigError(`invalid configuration: ${problems.join(', ')}`);
  return out as { [K in keyof S]: z.output<S[K]> };
}

export const port = (def: number) => z.coerce.number().int().min(1).max(65535).default(def);
export const int = (def: number, min = 0) => z.coerce.number().int().min(min).default(def);
export const str = (def: string) => z.string().min(1).default(def);
export const bool = (def: boolean) =>
  z
    .enum(['1', '0', 'true', 'false', 'yes', 'no'])
    .default(def ? 'true' : 'false')
    .transform((v) => v === '1' || v === 'true' || v === 'yes');
