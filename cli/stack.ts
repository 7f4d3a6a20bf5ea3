// `specontext stack up | down | status`: the local Temporal + NATS stack.
import type { Command } from 'commander';
import { stackConfig } from '../config/stack';
import { formatStatus, stackDown, stackStatus, stackUp } from '../infra/stack';

export function registerStackCommands(program: Command): void {
  const stack = program
    .command('stack')
    .description(
      'local Temporal dev server + NATS JetStream (ports and data dir from SPECONTEXT_*)',
    );

  stack
    .command('up')
    .description('start both servers (no-op for those already running) and wait until they answer')
    .action(async () => {
      const c = stackConfig();
      const rows = await stackUp(c);
      process.stdout.write(`${formatStatus(rows)}\ndata dir  ${c.dataDir}\n`);
    });

  stack
    .command('down')
    .description('stop both servers (SIGTERM, then SIGKILL after a timeout)')
    .action(async () => {
      const stopped = await stackDown(stackConfig());
      process.stdout.write(
        stopped.length ? `stopped ${stopped.join(', ')}\n` : 'nothing running\n',
      );
    });

  stack
    .command('status')
    .description("print each server's address and health; exit code 1 unless both are healthy")
    .action(async () => {
      const rows = await stackStatus(stackConfig());
      process.stdout.write(`${formatStatus(rows)}\n`);
      if (!rows.every((r) => r.healthy)) process.exitCode = 1;
    });
}
