// The text of a completion as its tokens arrive: decoded as a whole after a short tail of the
// prompt (so a leading space or a multi-byte character comes out as `mohawk generate` prints it),
// cut at the first stop string, and released in pieces that never end inside an incomplete
// character or inside what may still become a stop string.

import type { Tokenizer } from '../io/tokenizer.js';

export class CompletionText {
  private readonly ids: number[] = [];
  private readonly anchor: number[];
  private readonly anchorText: string;
  private emitted = '';
  /** the completion so far, cut at a stop string once one appeared */
  text = '';
  stopped = false;

  constructor(
    private readonly tokenizer: Tokenizer,
    promptIds: number[],
    private readonly stops: string[],
  ) {
    this.anchor = promptIds.slice(-8);
    this.anchorText = tokenizer.decode(this.anchor);
  }

  private decodeAll(): string {
    const full = this.tokenizer.decode([...this.anchor, ...this.ids]);
    return full.startsWith(this.anchorText)
      ? full.slice(this.anchorText.length)
      : this.tokenizer.decode(this.ids);
  }

  /** Add a token; returns the newly releasable text ('' while held back). */
  push(id: number): string {
    if (this.stopped) return '';
    this.ids.push(id);
    let text = this.decodeAll();
    let cut = -1;
    for (const s of this.stops) {
      const at = text.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stopped = true;
      text = text.slice(0, cut);
      this.text = text;
      return this.release(text);
    }
    this.text = text;
    let safe = text;
    if (safe.endsWith('\uFFFD')) return ''; // an incomplete UTF-8 sequence: wait for more bytes
    // hold back a tail that may grow into a stop string
    let hold = 0;
    for (const s of this.stops)
      for (let k = Math.min(s.length - 1, safe.length); k > hold; k--)
        if (safe.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
    safe = safe.slice(0, safe.length - hold);
    return this.release(safe);
  }

  /** What is left to release once the sequence ended. */
  finish(): string {
    return this.release(this.text);
  }

  private release(upto: string): string {
    if (upto.length <= this.emitted.length || !upto.startsWith(this.emitted)) return '';
    const piece = upto.slice(this.emitted.length);
    this.emitted = upto;
    return piece;
  }
}
