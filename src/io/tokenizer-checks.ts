// Checks of a tokenizer.json before it is built: ids bounded by the vocabulary, post-processors
// whose templates make sense, and regular expressions (Split pre-tokenizers, Replace normalizers)
// that run in bounded time. @huggingface/tokenizers compiles patterns into JavaScript RegExps,
// which backtrack: a repeated group that itself repeats or alternates, like (a+)+ or (a|a)*, can
// take time exponential in the text's length, and a single call cannot be interrupted. So such
// patterns are refused when the file is loaded. No published tokenizer uses them: the GPT-2,
// Llama 3, Qwen and GPT-4o patterns repeat only character classes and bounded groups.

type Json = Record<string, unknown>;

function fail(file: string, field: string, msg: string): never {
  throw new Error(`${file}: ${field} ${msg}`);
}

const isObj = (v: unknown): v is Json => !!v && typeof v === 'object' && !Array.isArray(v);

/**
 * Why a regular expression may backtrack for a time exponential (or of a high degree) in the text
 * length, or null when it is safe: a group repeated more than once (`*`, `+`, `{n,}`, `{n,m}` with
 * m > 1) whose body holds a quantifier or an alternation; or a backreference.
 */
export function regexHazard(pattern: string): string | null {
  interface Group {
    start: number;
    quantified: boolean;
    alternation: boolean;
  }
  const stack: Group[] = [{ start: -1, quantified: false, alternation: false }];
  // parses a quantifier at i: its end and its maximum count (Infinity when unbounded), or null
  const quantifier = (i: number): { end: number; max: number } | null => {
    const c = pattern[i];
    let end: number;
    let max: number;
    if (c === '*' || c === '+') [end, max] = [i + 1, Infinity];
    else if (c === '?') [end, max] = [i + 1, 1];
    else if (c === '{') {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(pattern.slice(i));
      if (!m) return null;
      end = i + m[0].length;
      max = m[2] === undefined ? Number(m[1]) : m[3] === '' ? Infinity : Number(m[3]);
    } else return null;
    if (pattern[end] === '?' || pattern[end] === '+') end++; // lazy or possessive
    return { end, max };
  };
  let i = 0;
  while (i < pattern.length) {
    const c = pattern[i];
    const top = stack[stack.length - 1];
    if (c === '\\') {
      const n = pattern[i + 1];
      if (n !== undefined && /[1-9k]/.test(n)) return `a backreference (\\${n}) at ${i}`;
      if ((n === 'p' || n === 'P' || n === 'u' || n === 'x') && pattern[i + 2] === '{') {
        const close = pattern.indexOf('}', i + 2);
        i = close < 0 ? pattern.length : close + 1;
      } else i += 2;
    } else if (c === '[') {
      // a character class: skip to its unescaped end
      i++;
      if (pattern[i] === '^') i++;
      if (pattern[i] === ']') i++;
      while (i < pattern.length && pattern[i] !== ']') i += pattern[i] === '\\' ? 2 : 1;
      i++;
    } else if (c === '(') {
      stack.push({ start: i, quantified: false, alternation: false });
      i++;
      if (pattern[i] === '?') {
        // (?:  (?=  (?!  (?<=  (?<!  (?<name>  (?i:  ...: skip the group's header
        const m = /^\?(<[=!]|[=!:]|<[A-Za-z_][A-Za-z0-9_]*>|[a-zA-Z-]+:)/.exec(pattern.slice(i));
        i += m ? m[0].length : 1;
      }
      continue;
    } else if (c === ')') {
      if (stack.length === 1) return null; // unbalanced: the RegExp constructor reports it
      const g = stack.pop()!;
      const q = quantifier(i + 1);
      const parent = stack[stack.length - 1];
      if (q && q.max > 1 && (g.quantified || (g.alternation && q.max === Infinity)))
        return (
          `a repeated group that itself ${g.quantified ? 'repeats' : 'alternates'} ` +
          `(${pattern.slice(g.start, q.end)}) can take exponential time`
        );
      parent.quantified ||= g.quantified || (q !== null && q.max > 1);
      parent.alternation ||= g.alternation;
      i = q ? q.end : i + 1;
      continue;
    } else if (c === '|') {
      top.alternation = true;
      i++;
      continue;
    } else i++;
    // an atom just ended at i: a quantifier after it marks the enclosing group
    const q = quantifier(i);
    if (q) {
      if (q.max > 1) top.quantified = true;
      i = q.end;
    }
  }
  return null;
}

/** Walk a JSON tree and check every {"Regex": "..."} pattern (Split, Replace, ...). */
function checkPatterns(v: unknown, file: string, where: string): void {
  if (Array.isArray(v)) v.forEach((x, i) => checkPatterns(x, file, `${where}[${i}]`));
  else if (isObj(v)) {
    for (const [k, x] of Object.entries(v)) {
      if (k === 'Regex' && typeof x === 'string') {
        const why = regexHazard(x);
        if (why) fail(file, where, `has an unsafe regular expression ${JSON.stringify(x)}: ${why}`);
      } else checkPatterns(x, file, where ? `${where}.${k}` : k);
    }
  }
}

const ID_LIMIT = 1 << 24;

/**
 * Check a tokenizer.json before building it; returns the number of ids (the vocabulary entries
 * plus the added tokens that extend it), the bound every id must stay below.
 */
export function checkTokenizerJson(json: Json, file: string): number {
  const model = json.model;
  const vocab = isObj(model) ? model.vocab : undefined;
  const entries = isObj(vocab) ? Object.keys(vocab).length : Array.isArray(vocab) ? vocab.length : 0;
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) fail(file, 'added_tokens', 'must be a list');
  const bound = Math.min(entries + added.length, ID_LIMIT);
  const checkId = (id: unknown, field: string): void => {
    if (!(Number.isInteger(id) && (id as number) >= 0 && (id as number) < bound))
      fail(
        file,
        field,
        `(${JSON.stringify(id)}) must be an integer id below ${bound} (the ${entries} vocabulary entries plus ${added.length} added tokens)`,
      );
  };
  if (isObj(vocab))
    for (const [piece, id] of Object.entries(vocab)) checkId(id, `model.vocab[${JSON.stringify(piece)}]`);
  added.forEach((t, i) => {
    if (!isObj(t) || typeof t.content !== 'string')
      fail(file, `added_tokens[${i}]`, 'must be {"id": N, "content": "..."}');
    checkId(t.id, `added_tokens[${i}].id`);
  });
  checkPostProcessor(json.post_processor, file, 'post_processor', checkId);
  checkPatterns(json.normalizer, file, 'normalizer');
  checkPatterns(json.pre_tokenizer, file, 'pre_tokenizer');
  checkPatterns(json.decoder, file, 'decoder');
  return bound;
}

function checkPostProcessor(
  pp: unknown,
  file: string,
  field: string,
  checkId: (id: unknown, field: string) => void,
): void {
  if (pp === null || pp === undefined) return;
  if (!isObj(pp)) fail(file, field, 'must be an object with a "type"');
  const pair = (v: unknown, f: string): void => {
    if (!(Array.isArray(v) && v.length === 2 && typeof v[0] === 'string'))
      fail(file, f, `must be ["token", id], got ${JSON.stringify(v)}`);
    checkId(v[1], `${f}[1]`);
  };
  switch (pp.type) {
    case 'Sequence':
      if (!Array.isArray(pp.processors)) fail(file, `${field}.processors`, 'must be a list');
      pp.processors.forEach((p, i) => checkPostProcessor(p, file, `${field}.processors[${i}]`, checkId));
      return;
    case 'ByteLevel':
      return;
    case 'BertProcessing':
    case 'RobertaProcessing':
      pair(pp.sep, `${field}.sep`);
      pair(pp.cls, `${field}.cls`);
      return;
    case 'TemplateProcessing': {
      const specials = pp.special_tokens ?? {};
      if (!isObj(specials)) fail(file, `${field}.special_tokens`, 'must be a mapping');
      for (const [name, s] of Object.entries(specials)) {
        const f = `${field}.special_tokens[${JSON.stringify(name)}]`;
        if (
          !isObj(s) ||
          !Array.isArray(s.ids) ||
          !Array.isArray(s.tokens) ||
          s.ids.length !== s.tokens.length
        )
          fail(file, f, 'must be {"id": ..., "ids": [...], "tokens": [...]} with as many ids as tokens');
        s.ids.forEach((id, i) => checkId(id, `${f}.ids[${i}]`));
      }
      for (const [key, sequences] of [
        ['single', ['A']],
        ['pair', ['A', 'B']],
      ] as const) {
        const t = pp[key];
        if (t === undefined || t === null) continue;
        if (!Array.isArray(t)) fail(file, `${field}.${key}`, 'must be a list of pieces');
        const seen: string[] = [];
        t.forEach((piece, i) => {
          const f = `${field}.${key}[${i}]`;
          const sp = isObj(piece) ? piece.SpecialToken : undefined;
          const sq = isObj(piece) ? piece.Sequence : undefined;
          if (isObj(sp) && typeof sp.id === 'string') {
            if (!Object.hasOwn(specials, sp.id))
              fail(file, f, `names the special token ${JSON.stringify(sp.id)}, missing from special_tokens`);
          } else if (isObj(sq) && (sq.id === 'A' || sq.id === 'B')) seen.push(sq.id);
          else fail(file, f, `must be {"SpecialToken": {"id": ...}} or {"Sequence": {"id": "A"|"B"}}`);
        });
        if (t.length > 0 && sequences.some((s) => !seen.includes(s)))
          fail(
            file,
            `${field}.${key}`,
            `must place the text (${sequences.map((s) => `Sequence ${s}`).join(', ')})`,
          );
      }
      return;
    }
    default:
      fail(file, `${field}.type`, `${JSON.stringify(pp.type)} is not a known post-processor`);
  }
}
