// mohawk demo: placeholder until the pipeline issue lands.

import { parse } from '../args.js';

const HELP = `usage: mohawk demo [--json]

Pretrain a tiny teacher, distill it into a Phi-Mamba student through the three MOHAWK stages
on CPU, and compare perplexities.`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(argv, { json: { type: 'boolean' } }, HELP);
  if (!p) return 0;
  console.log('mohawk demo: not yet available');
  return 0;
}
