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
};
