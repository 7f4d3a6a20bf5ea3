// Isolated stacks for tests: free ports, a data dir of their own under
// .data/test/ (where .ci/run's cleanup looks for leftover pid files), and a
// stop that also removes the data dir. The default stack on 7233/4222 is
// never touched by tests.
import { rmSync } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../../config/root';
import { type StackConfig, stackConfig } from '../../config/stack';
import { freePort } from '../../infra/port';
import { stackDown, stackUp } from '../../infra/stack';

export const testDataRoot = path.join(projectRoot, '.data', 'test');

/** Environment variables for a stack named `name` on ports that are free now. */
export async function isolatedStackEnv(name: string): Promise<Record<string, string>> {
  const ports = new Set<number>();
  while (ports.size < 4) ports.add(await freePort());
  const [temporal, ui, nats, monitor] = [...ports].map(String);
  return {
    SPECONTEXT_DATA_DIR: path.join(testDataRoot, name),
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
