// The local stack: a Temporal dev server (SQLite file, web UI) and a NATS
// server with JetStream, both real binaries from the project venv, both bound
// to loopback, both with their state under the data dir. `up` is idempotent
// and waits until each server answers a real client call; `down` stops them.
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { StackConfig } from '../config/stack';
import { probeNats, probeTemporal } from './health';
import { portIsFree } from './port';
import {
  isOurs,
  logFile,
  logTail,
  runningPid,
  startDetached,
  stopTracked,
  type Tracked,
} from './process';

export class StackError extends Error {
  override name = 'StackError';
}

interface Server extends Tracked {
  /** Ports it binds, keyed by the variable that configures each. */
  ports: Record<string, number>;
  address: string;
  args: string[];
  probe: (c: StackConfig) => Promise<string>;
}

export function stackServers(c: StackConfig): Server[] {
  const temporalArgs = [
    'server',
    'start-dev',
    '--ip',
    c.host,
    '--port',
    String(c.temporal.port),
    '--ui-port',
    String(c.temporal.uiPort),
    '--db-filename',
    path.join(c.dataDir, 'temporal.sqlite'),
    '--ui-disable-news-fetch', // no network beyond loopback
  ];
  // "default" always exists; any other namespace is created at launch.
  if (c.temporal.namespace !== 'default') temporalArgs.push('--namespace', c.temporal.namespace);
  return [
    {
      name: 'temporal',
      bin: path.join(c.binDir, 'temporal'),
      dir: c.dataDir,
      ports: {
        SPECONTEXT_TEMPORAL_PORT: c.temporal.port,
        SPECONTEXT_TEMPORAL_UI_PORT: c.temporal.uiPort,
      },
      address: `${c.host}:${c.temporal.port} (ui ${c.temporal.uiUrl})`,
      args: temporalArgs,
      probe: probeTemporal,
    },
    {
      name: 'nats',
      bin: path.join(c.binDir, 'nats-server'),
      dir: c.dataDir,
      ports: {
        SPECONTEXT_NATS_PORT: c.nats.port,
        SPECONTEXT_NATS_MONITOR_PORT: c.nats.monitorPort,
      },
      address: `nats://${c.host}:${c.nats.port} (monitor ${c.nats.monitorUrl})`,
      args: [
        '-js',
        '-sd',
        path.join(c.dataDir, 'nats'),
        '-a',
        c.host,
        '-p',
        String(c.nats.port),
        '-m',
        String(c.nats.monitorPort),
        '--server_name',
        'specontext',
      ],
      probe: probeNats,
    },
  ];
}

export interface ServerStatus {
  name: string;
  address: string;
  pid?: number;
  healthy: boolean;
  detail: string;
  log: string;
}

const errorText = (e: unknown) => (e instanceof Error ? e.message : String(e));

async function check(s: Server, c: StackConfig): Promise<ServerStatus> {
  const pid = runningPid(s);
  const base = { name: s.name, address: s.address, pid, log: logFile(s) };
  if (pid === undefined) return { ...base, healthy: false, detail: 'not running' };
  try {
    return { ...base, healthy: true, detail: await s.probe(c) };
  } catch (e) {
    return { ...base, healthy: false, detail: `not answering: ${errorText(e)}` };
  }
}

export function stackStatus(c: StackConfig): Promise<ServerStatus[]> {
  return Promise.all(stackServers(c).map((s) => check(s, c)));
}

async function waitHealthy(s: Server, c: StackConfig, pid: number): Promise<ServerStatus> {
  const deadline = Date.now() + c.timeoutMs;
  let last = '';
  for (;;) {
    if (!isOurs(pid, s.bin)) {
      throw new StackError(`${s.name} exited while starting; log ${logFile(s)}:\n${logTail(s)}`);
    }
    try {
      const detail = await s.probe(c);
      return { name: s.name, address: s.address, pid, healthy: true, detail, log: logFile(s) };
    } catch (e) {
      last = errorText(e);
    }
    if (Date.now() > deadline) {
      throw new StackError(
        `${s.name} did not answer within ${c.timeoutMs} ms (SPECONTEXT_STACK_TIMEOUT_MS): ${last}; log ${logFile(s)}`,
      );
    }
    await sleep(250);
  }
}

function checkBinary(s: Server, c: StackConfig): void {
  if (!existsSync(s.bin)) {
    throw new StackError(
      `${s.bin} not found (SPECONTEXT_BIN_DIR=${c.binDir}); run \`make setup\` to create the venv`,
    );
  }
}

async function checkPorts(s: Server, c: StackConfig): Promise<void> {
  for (const [name, port] of Object.entries(s.ports)) {
    if (!(await portIsFree(port, c.host))) {
      throw new StackError(
        `port ${port} (${name}) on ${c.host} is already in use by another process; ` +
          `stop that process or set ${name} to a free port`,
      );
    }
  }
}

/**
 * Starts whatever is not running and waits until both servers answer.
 * Servers already running are left alone. If a server started here does not
 * come up, the servers started here are stopped again before the error.
 */
export async function stackUp(c: StackConfig): Promise<ServerStatus[]> {
  const servers = stackServers(c);
  const running = servers.map((s) => runningPid(s));
  // Check everything before starting anything, so a bad port starts nothing.
  for (const [i, s] of servers.entries()) {
    if (running[i] !== undefined) continue;
    checkBinary(s, c);
    await checkPorts(s, c);
  }
  mkdirSync(c.dataDir, { recursive: true });
  const started: Server[] = [];
  try {
    const pids = servers.map((s, i) => {
      const pid = running[i];
      if (pid !== undefined) return pid;
      started.push(s);
      return startDetached(s, s.args);
    });
    return await Promise.all(servers.map((s, i) => waitHealthy(s, c, pids[i] as number)));
  } catch (e) {
    for (const s of started) await stopTracked(s, c.timeoutMs);
    throw e;
  }
}

/** Stops both servers (SIGTERM, then SIGKILL after the timeout). Returns the names stopped. */
export async function stackDown(c: StackConfig): Promise<string[]> {
  const stopped: string[] = [];
  // Stop in reverse start order; each stop is independent.
  for (const s of stackServers(c).reverse()) {
    if ((await stopTracked(s, Math.min(c.timeoutMs, 15_000))) !== undefined) stopped.push(s.name);
  }
  return stopped;
}

export function formatStatus(rows: ServerStatus[]): string {
  return rows
    .map(
      (r) =>
        `${r.name.padEnd(9)} ${r.healthy ? 'healthy  ' : 'UNHEALTHY'} ${r.address}` +
        `  pid ${r.pid ?? '-'}  ${r.detail}`,
    )
    .join('\n');
}
