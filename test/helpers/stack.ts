// Isolated stacks for tests: free ports, a data dir of their own under
// .data/test/ (where .ci/run's cleanup looks for leftover pid files), and a
// stop that also removes the data dir. The default stack on 7233/4222 is
// never touched by tests.
import { existsSync, readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../../config/root';
import { type StackConfig, stackConfig } from '../../config/stack';
import { freePort } from '../../infra/port';
import { stackDown, stackUp } from '../../infra/stack';

export const testDataRoot = path.join(projectRoot, '.data', 'test');

/**
 * Environment variables for a stack named `name` on ports that are free now.
 * The data dir carries this process's pid, so runs in parallel (several
 * people testing in one tree) never share or stop each other's stacks.
 */
export async function isolatedStackEnv(name: string): Promise<Record<string, string>> {
  const ports = new Set<number>();
  while (ports.size < 4) ports.add(await freePort());
  const [temporal, ui, nats, monitor] = [...ports].map(String);
  return {
    SPECONTEXT_DATA_DIR: path.join(testDataRoot, `${name}-${process.pid}`),
    SPECONTEXT_TEMPORAL_PORT: temporal as string,
    SPECONTEXT_TEMPORAL_UI_PORT: ui as string,
    SPECONTEXT_NATS_PORT: nats as string,
    SPECONTEXT_NATS_MONITOR_PORT: monitor as string,
  };
}

export interface IsolatedStack {
  env: Record<string, string>;
  config: StackConfig;
  stop(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops and removes the stacks of test runs that died without stopping them. */
export async function sweepDeadTestStacks(): Promise<string[]> {
  if (!existsSync(testDataRoot)) return [];
  const swept: string[] = [];
  for (const dir of readdirSync(testDataRoot)) {
    const owner = Number(/-(\d+)$/.exec(dir)?.[1]);
    if (!owner || alive(owner)) continue;
    const dataDir = path.join(testDataRoot, dir);
    await stackDown(stackConfig({ ...process.env, SPECONTEXT_DATA_DIR: dataDir }));
    rmSync(dataDir, { recursive: true, force: true });
    swept.push(dir);
  }
  return swept;
}

/** Starts a fresh isolated stack (any leftover with the same name is stopped and wiped first). */
export async function startIsolatedStack(name: string): Promise<IsolatedStack> {
  const env = await isolatedStackEnv(name);
  const config = stackConfig({ ...process.env, ...env });
  await stackDown(config);
  rmSync(config.dataDir, { recursive: true, force: true });
  await stackUp(config);
  return {
    env,
    config,
    async stop() {
      await stackDown(config);
      rmSync(config.dataDir, { recursive: true, force: true });
    },
  };
}
