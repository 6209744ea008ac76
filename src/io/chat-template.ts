// Chat templates: the Jinja template of a Hugging Face tokenizer (tokenizer_config.json's
// `chat_template`, a string or a list of named templates, or a chat_template.jinja file beside
// it), rendered with @huggingface/jinja the way transformers' apply_chat_template does:
// `messages`, `add_generation_prompt`, the special tokens by name (the package brings
// `raise_exception`).

import fs from 'node:fs';
import path from 'node:path';
import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: string;
  content: string;
}

export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string,
    /** bos_token, eos_token, ... as strings, visible to the template */
    private readonly specials: Record<string, string> = {},
    readonly where = 'chat template',
  ) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new Error(`${where}: cannot parse the Jinja template (${(e as Error).message})`, { cause: e });
    }
  }

  /** The conversation as text; with `addGenerationPrompt` it ends where the assistant's reply begins. */
  render(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    try {
      return this.template.render({
        ...this.specials,
        messages,
        add_generation_prompt: opts.addGenerationPrompt ?? false,
      });
    } catch (e) {
      throw new Error(`${this.where}: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * The rendered conversation cut into pieces, each marked whether it is an assistant message's
   * own text (what a loss masked to the assistant counts). Found by rendering growing prefixes of
   * the conversation: what message i adds after the generation prompt that precedes it is the
   * assistant's part. Templates that rewrite earlier text when a message is added (rare) fail
   * with an error naming the message.
   */
  segments(messages: ChatMessage[]): { text: string; assistant: boolean }[] {
    const out: { text: string; assistant: boolean }[] = [];
    let done = '';
    const push = (text: string, assistant: boolean, i: number) => {
      if (!text.startsWith(done))
        throw new Error(
          `${this.where}: rendering message ${i} changes the text before it; cannot mask the prompt`,
        );
      const piece = text.slice(done.length);
      if (piece) out.push({ text: piece, assistant });
      done = text;
    };
    messages.forEach((m, i) => {
      const upto = messages.slice(0, i + 1);
      if (m.role === 'assistant')
        push(this.render(messages.slice(0, i), { addGenerationPrompt: true }), false, i);
      push(this.render(upto), m.role === 'assistant', i);
    });
    return out;
  }
}

function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  return null;
}

/** The chat template of a tokenizer directory, or null when it has none. */
export function loadChatTemplate(dir: string): ChatTemplate | null {
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  let config: Record<string, unknown> = {};
  if (fs.existsSync(cfgFile)) {
    try {
      config = JSON.parse(fs.readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new Error(`${cfgFile}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
  }
  const specials: Record<string, string> = {};
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token']) {
    const s = tokenString(config[k]);
    if (s !== null) specials[k] = s;
  }
  let source: string | null = null;
  let where = `${cfgFile}: chat_template`;
  const t = config.chat_template;
  if (typeof t === 'string') source = t;
  else if (Array.isArray(t)) {
    const named = t as { name?: unknown; template?: unknown }[];
    const pick = named.find((x) => x?.name === 'default') ?? named[0];
    if (typeof pick?.template !== 'string')
      throw new Error(`${cfgFile}: chat_template must be a string or a list of {name, template}`);
    source = pick.template;
  } else if (t !== undefined && t !== null) {
    throw new Error(`${cfgFile}: chat_template must be a string or a list of {name, template}`);
  }
  const jinjaFile = path.join(dir, 'chat_template.jinja');
  if (source === null && fs.existsSync(jinjaFile)) {
    source = fs.readFileSync(jinjaFile, 'utf8');
    where = jinjaFile;
  }
  return source === null ? null : new ChatTemplate(source, specials, where);
}

/** A chat template from a file (a Jinja text, or a tokenizer_config.json holding one). */
export function readChatTemplateFile(file: string, specials: Record<string, string> = {}): ChatTemplate {
  if (!fs.existsSync(file)) throw new Error(`${file}: not found`);
  if (file.endsWith('.json')) {
    const t = loadChatTemplate(path.dirname(file));
    if (!t || path.basename(file) !== 'tokenizer_config.json')
      throw new Error(`${file}: expected a .jinja file or a tokenizer_config.json with chat_template`);
    return t;
  }
  return new ChatTemplate(fs.readFileSync(file, 'utf8'), specials, file);
}
