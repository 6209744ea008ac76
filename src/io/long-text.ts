// Long texts encoded in pieces, so that time and memory grow linearly with the text: the JS
// tokenizer holds about 100-450 bytes per character of the text it is given at once (a 10 MB
// document took 2.6 GB), so a long text is cut at points where the tokenizer splits anyway and
// the pieces' ids are concatenated. Two kinds of cut, chosen per tokenizer by probing that pieces
// encode exactly as the whole:
//   'before-space' (GPT-2-style byte-level BPE): before a space, tab or newline that precedes a
//      letter or digit; the pre-tokenizer's regex splits there (not before a special token such
//      as <|endoftext|>, which ends the regex's segment and so changes how the run splits).
//   'drop-space' (SentencePiece-style, "▁" prepended to the text): at a single space between the
//      end of a word and a letter or digit (never next to a special token such as <s>); the space
//      is dropped and the next piece's prepended "▁" stands for it.
// A tokenizer for which neither is exact encodes every text whole.

export type CutKind = 'before-space' | 'drop-space' | null;

/**
 * Texts longer than this are cut into pieces of about PIECE_CHARS characters. Small pieces also
 * run faster: the tokenizer's BPE grows faster than linearly in the length of a word, and a
 * SentencePiece-style text is one word (64k characters take 11x longer per character than 64).
 */
export const LONG_TEXT = 4096;
export const PIECE_CHARS = 512;

const PROBES: [string, string][] = [
  ['The cat sat on the mat.', '\nThe dog ran.'],
  ['It was the best of times,', ' it was the worst of times'],
  ['end of a paragraph.\n', '\nNext one, 42 times'],
  ['trailing spaces  ', " 'quoted' words"],
  ['\u00fcber na\u00efve', ' caf\u00e9\n\tindented'],
  ['Once upon a time', ' there was a girl.'],
];

const space = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x09;
/** the end of a word: never the end of a special token like <s> or [SEP] */
const wordEnd = (c: number): boolean => alnum(c) || '.,;:!?\'")'.includes(String.fromCharCode(c));
/** a letter or digit: never the start of a special token like <|endoftext|> or [SEP] */
const alnum = (c: number): boolean =>
  (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);

/** The kind of cut under which this encoder gives the same ids in pieces as whole, or null. */
export function chooseCut(encode: (text: string) => number[]): CutKind {
  const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
  const beforeSpace = PROBES.every(([x, y]) => same(encode(x + y), [...encode(x), ...encode(y)]));
  if (beforeSpace) return 'before-space';
  const words = PROBES.map(([x, y]) => [x.trimEnd(), y.trim()] as const).filter(
    ([x, y]) => x.length > 0 && alnum(y.charCodeAt(0)) && wordEnd(x.charCodeAt(x.length - 1)),
  );
  const dropSpace = words.every(([x, y]) => same(encode(`${x} ${y}`), [...encode(x), ...encode(y)]));
  return dropSpace ? 'drop-space' : null;
}

/** Where the piece starting at `start` ends (the cut), searching back from start + size. */
function findCut(text: string, start: number, size: number, kind: Exclude<CutKind, null>): number {
  const hi = Math.min(text.length - 1, start + size);
  for (let i = hi; i > start; i--) {
    const c = text.charCodeAt(i);
    const next = text.charCodeAt(i + 1);
    if (kind === 'before-space' && space(c) && alnum(next)) return i;
    if (
      kind === 'drop-space' &&
      c === 0x20 &&
      alnum(next) &&
      wordEnd(text.charCodeAt(i - 1)) &&
      i - 1 > start
    )
      return i;
  }
  return -1;
}

/** Encode `text` in pieces of about `size` characters with `encode` (exact under `kind`). */
export function encodeInPieces(
  text: string,
  encode: (text: string) => number[],
  kind: CutKind,
  size = PIECE_CHARS,
): number[] {
  if (kind === null || text.length <= Math.max(size, 1)) return encode(text);
  const out: number[] = [];
  let start = 0;
  while (start < text.length) {
    let cut = -1;
    if (text.length - start > size) {
      // the nearest cut before start + size, else further on (a long run without one)
      for (let window = size; cut < 0 && start + window / 2 < text.length; window *= 2)
        cut = findCut(text, start, window, kind);
    }
    const end = cut < 0 ? text.length : cut;
    const ids = encode(text.slice(start, end));
    for (const id of ids) out.push(id);
    start = kind === 'drop-space' && cut >= 0 ? end + 1 : end;
  }
  return out;
}
