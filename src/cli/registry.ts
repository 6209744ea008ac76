// Every command, loaded on demand so that `mohawk score` does not import the trainer.

export interface CommandModule {
  /** returns the exit code (0 when omitted) */
  run(argv: string[]): Promise<number | void>;
}

export interface Command {
  summary: string;
  load(): Promise<CommandModule>;
}

export const commands: Record<string, Command> = {
  demo: {
    summary: 'pretrain a tiny teacher, distill it through the three MOHAWK stages, compare',
    load: () => import('./commands/demo.js'),
  },
  distill: {
    summary: 'distill a Transformer into a Mamba-2 student with the MOHAWK stages (config file)',
    load: () => import('./commands/distill.js'),
  },
  score: {
    summary: 'per-token log-probabilities, NLL and perplexity of a text under a model',
    load: () => import('./commands/score.js'),
  },
  generate: {
    summary: 'generate text (KV cache for attention, recurrent state for SSM layers)',
    load: () => import('./commands/generate.js'),
  },
  convert: {
    summary: 'convert a llama2.c checkpoint, or re-save a model as safetensors (dtype, shards)',
    load: () => import('./commands/convert.js'),
  },
  inspect: {
    summary: 'list the tensors of a weights file or model directory, print some values',
    load: () => import('./commands/inspect.js'),
  },
  data: {
    summary: 'tokenize text and JSONL into token shards (prepare), or describe them (info)',
    load: () => import('./commands/data.js'),
  },
  'sample-data': {
    summary: 'sample training text from a teacher model into token shards or JSONL',
    load: () => import('./commands/sample-data.js'),
  },
  eval: {
    summary: 'zero-shot tasks (LAMBADA, HellaSwag, PIQA, ARC, WinoGrande), lm-evaluation-harness style',
    load: () => import('./commands/eval.js'),
  },
  perplexity: {
    summary: 'sliding-window perplexity of text files',
    load: () => import('./commands/perplexity.js'),
  },
  serve: {
    summary: 'an OpenAI-compatible HTTP server (completions, chat, streaming), continuous batching',
    load: () => import('./commands/serve.js'),
  },
  approx: {
    summary: 'how close Toeplitz, low-rank, SSD and semiseparable matrices get to attention',
    load: () => import('./commands/approx.js'),
  },
  plot: {
    summary: "a run's metrics as CSV and a report with charts (loss, lr, grad norm, tokens/s, validation)",
    load: () => import('./commands/plot.js'),
  },
  diagnose: {
    summary: 'per-layer MOHAWK distances between a teacher and its student, with a picture',
    load: () => import('./commands/diagnose.js'),
  },
};
