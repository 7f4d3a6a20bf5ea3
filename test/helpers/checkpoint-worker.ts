// A real worker in its own process, for the preemption tests: they SIGKILL it
// mid-generation (test/preemption.test.ts). Configured from the environment.
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { serviceConfig } from '../../config/service';
import { startWorker } from '../../worker/worker';

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const w = await startWorker(serviceConfig(process.env), { shutdownGraceS: 1 });
  process.stdout.write(`ready ${w.hostTaskQueue}\n`);
  process.on('SIGTERM', () => {
    w.stop().then(() => process.exit(0));
  });
  await w.done;
}

main().catch((err) => {
  process.stderr.write(`worker failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
