// The `specontext` CLI. Each concern registers its commands from its own file.
import { Command } from 'commander';
import { registerGenerateCommands } from './generate';
import { registerServiceCommands } from './service';
import { registerSparseCommands } from './sparse';
import { registerStackCommands } from './stack';

export function buildProgram(): Command {
  const program = new Command('specontext')
    .description('Long-document reasoning jobs on a SpeContext inference engine')
    .showHelpAfterError();
  registerStackCommands(program);
  registerGenerateCommands(program);
  registerSparseCommands(program);
  registerServiceCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.stderr.write(`specontext: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}
