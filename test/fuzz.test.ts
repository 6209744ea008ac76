// A short run of the fuzz harness (test/fuzz/): 240 seeded cases over the six input kinds.
// The long run (10,000+ cases) is `npm run fuzz -- --cases 12000`, recorded in docs/reliability.md.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KINDS } from './fuzz/cases.js';
import { fuzzTable, runFuzz } from './fuzz/harness.js';

describe('fuzz harness (short run)', () => {
  it('240 mutated inputs: no crash, hang or quiet wrong answer', async () => {
    const r = await runFuzz({ cases: 240, seed: 7, timeoutMs: 10000 });
    const table = fuzzTable(r);
    assert.equal(r.cases, 240);
    for (const k of KINDS) {
      const c = r.counts[k];
      assert.equal(c['clean-error'] + c.success + c['quiet-wrong'] + c.crash + c.hang, 40, table);
      assert.equal(c.hang, 0, `${k} hangs\n${table}\n${JSON.stringify(r.examples[k])}`);
      assert.equal(c.crash + c['quiet-wrong'], 0, `${k}\n${table}\n${JSON.stringify(r.examples[k])}`);
      assert.ok(c.success > 0 && c['clean-error'] > 0, `${k}: both outcomes exercised\n${table}`);
    }
  });
});
