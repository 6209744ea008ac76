#!/usr/bin/env node
// The mohawk command line: dispatches to one module per command in ./commands.

import { commands } from './registry.js';
import { CliError } from './args.js';

function usage(): string {
  const lines = ['usage: mohawk <command> [options]', '', 'commands:'];
  for (const [name, c] of Object.entries(commands)) lines.push(`  ${name.padEnd(12)} ${c.summary}`);
  lines.push('', 'Run `mohawk <command> --help` for the options of one command.');
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return name ? 0 : 1;
  }
  if (name === '--version') {
    console.log('mohawk 0.1.0');
    return 0;
  }
  const cmd = commands[name];
  if (!cmd) {
    console.error(`mohawk: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  const mod = await cmd.load();
  return (await mod.run(rest)) ?? 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof CliError) {
      console.error(`mohawk: ${err.message}`);
      process.exitCode = 2;
    } else if (err instanceof Error) {
      console.error(`mohawk: ${err.message}`);
      if (process.env.MOHAWK_DEBUG) console.error(err.stack);
      process.exitCode = 1;
    } else {
      console.error('mohawk:', err);
      process.exitCode = 1;
    }
  },
);
