// vitest globalSetup: one isolated stack shared by every test file of a run.
// Its SPECONTEXT_* variables are handed to the test workers (see stack-env.ts),
// so code under test that reads stackConfig() reaches this stack, not the
// developer's default one.
import type { TestProject } from 'vitest/node';
import { startIsolatedStack, sweepDeadTestStacks } from './stack';

declare module 'vitest' {
  export interface ProvidedContext {
    stackEnv: Record<string, string>;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  await sweepDeadTestStacks();
  const stack = await startIsolatedStack('shared');
  project.provide('stackEnv', stack.env);
  return () => stack.stop();
}
