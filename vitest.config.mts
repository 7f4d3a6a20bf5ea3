// Tests share real servers (one isolated Temporal + NATS stack per run, see
// test/helpers/global-stack.ts), so files run one after another, with long
// timeouts for the integration tests that start servers or run the model.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    globalSetup: ['test/helpers/global-stack.ts'],
    setupFiles: ['test/helpers/stack-env.ts'],
  },
});
