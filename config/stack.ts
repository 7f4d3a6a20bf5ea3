// Configuration of the local stack (Temporal dev server + NATS with JetStream)
// and of how clients reach it. Every value has a default and can be overridden
// by its environment variable, so tests can run a second, isolated stack.
import { z } from 'zod';
import { ConfigError, int, port, section, str } from './env';
import { fromRoot } from './root';

export interface StackConfig {
  /** Loopback address every server binds to and every client dials. */
  host: string;
  /** Holds the SQLite file, the JetStream store, pid files and logs. */
  dataDir: string;
  /** Folder holding the `temporal` and `nats-server` binaries (the project venv). */
  binDir: string;
  /** How long `up` waits for both servers to answer, and `down` for them to exit. */
  timeoutMs: number;
  temporal: {
    port: number;
    uiPort: number;
    /**
     * host:port that clients dial, as @temporalio/client wants it: the local
     * frontend unless SPECONTEXT_TEMPORAL_ADDRESS points elsewhere (a worker
     * in a container reaching a shared Temporal).
     */
    address: string;
    uiUrl: string;
    namespace: string;
    taskQueue: string;
  };
  nats: {
    port: number;
    monitorPort: number;
    /** nats://host:port that clients dial: the local server unless SPECONTEXT_NATS_URL is set. */
    url: string;
    monitorUrl: string;
  };
}

// The servers are for this machine only: never bind them beyond loopback.
const loopback = z
  .string()
  .regex(/^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost)$/, 'must be a loopback address')
  .default('127.0.0.1');

export const stackShape = {
  SPECONTEXT_HOST: loopback,
  SPECONTEXT_DATA_DIR: str('.data'),
  SPECONTEXT_BIN_DIR: str('.venv/bin'),
  SPECONTEXT_STACK_TIMEOUT_MS: int(60_000, 1_000),
  SPECONTEXT_TEMPORAL_PORT: port(7233),
  SPECONTEXT_TEMPORAL_UI_PORT: port(8233),
  SPECONTEXT_TEMPORAL_NAMESPACE: str('default'),
  SPECONTEXT_TASK_QUEUE: str('specontext'),
  SPECONTEXT_NATS_PORT: port(4222),
  SPECONTEXT_NATS_MONITOR_PORT: port(8222),
  // Client-side only: `stack up` always serves on SPECONTEXT_HOST.
  SPECONTEXT_TEMPORAL_ADDRESS: z
    .string()
    .regex(/^[\w.-]+:\d{1,5}$/, 'expected host:port')
    .optional(),
  SPECONTEXT_NATS_URL: z
    .string()
    .regex(/^(nats|tls):\/\/[\w.-]+(:\d{1,5})?$/, 'expected nats://host[:port]')
    .optional(),
};

/** Ports the stack binds, keyed by the variable that sets each. */
export function stackPorts(c: StackConfig): Record<string, number> {
  return {
    SPECONTEXT_TEMPORAL_PORT: c.temporal.port,
    SPECONTEXT_TEMPORAL_UI_PORT: c.temporal.uiPort,
    SPECONTEXT_NATS_PORT: c.nats.port,
    SPECONTEXT_NATS_MONITOR_PORT: c.nats.monitorPort,
  };
}

export function stackConfig(env: NodeJS.ProcessEnv = process.env): StackConfig {
  const v = section(stackShape, env);
  const host = v.SPECONTEXT_HOST;
  const c: StackConfig = {
    host,
    dataDir: fromRoot(v.SPECONTEXT_DATA_DIR),
    binDir: fromRoot(v.SPECONTEXT_BIN_DIR),
    timeoutMs: v.SPECONTEXT_STACK_TIMEOUT_MS,
    temporal: {
      port: v.SPECONTEXT_TEMPORAL_PORT,
      uiPort: v.SPECONTEXT_TEMPORAL_UI_PORT,
      address: v.SPECONTEXT_TEMPORAL_ADDRESS ?? `${host}:${v.SPECONTEXT_TEMPORAL_PORT}`,
      uiUrl: `http://${host}:${v.SPECONTEXT_TEMPORAL_UI_PORT}`,
      namespace: v.SPECONTEXT_TEMPORAL_NAMESPACE,
      taskQueue: v.SPECONTEXT_TASK_QUEUE,
    },
    nats: {
      port: v.SPECONTEXT_NATS_PORT,
      monitorPort: v.SPECONTEXT_NATS_MONITOR_PORT,
      url: v.SPECONTEXT_NATS_URL ?? `nats://${host}:${v.SPECONTEXT_NATS_PORT}`,
      monitorUrl: `http://${host}:${v.SPECONTEXT_NATS_MONITOR_PORT}`,
    },
  };
  const seen = new Map<number, string>();
  for (const [name, p] of Object.entries(stackPorts(c))) {
    const other = seen.get(p);
    if (other) throw new ConfigError(`invalid configuration: ${name} and ${other} are both ${p}`);
    seen.set(p, name);
  }
  return c;
}
