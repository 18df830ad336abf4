// The caption model takes revisions in place, as the caption files do (run: npm test).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CaptionModel } from '../lib/services/captionModel.js';

const env = (type, seq, data) => ({ v: 1, type, sid: 's', seq, t_wall: 0, t_mono: 0, data });

test('a revision replaces the text of its final, once, and only its own', () => {
  const m = new CaptionModel('s');
  m.handle(env('asr.final', 3, { segment_id: 1, text: "But whether it's sunny.", t0: 0.5, t1: 2.8 }));
  m.handle(env('asr.final', 9, { segment_id: 2, text: 'Please open the door.', t0: 3.7, t1: 6.1 }));
  m.handle(env('asr.revision', 12, { segment_id: 1, text: 'The weather is sunny.', t0: 0.5, t1: 2.8 }));
  assert.deepEqual(m.finals.map(f => [f.text, f.revised]), [['The weather is sunny.', true], ['Please open the door.', false]]);
  assert.deepEqual(m.takeRevised().map(f => f.seq), [3]);
  assert.deepEqual(m.takeRevised(), []); // taken
  // a revision of a segment not shown (or older than its final) changes nothing
  m.handle(env('asr.revision', 13, { segment_id: 7, text: 'x' }));
  assert.deepEqual(m.takeRevised(), []);
});

test('a snapshot after a gap shows finals with their revisions', () => {
  const m = new CaptionModel('s');
  const snapshot = {
    state: 'running',
    finals: [env('asr.final', 3, { segment_id: 1, text: 'old', t0: 0, t1: 1 })],
    revisions: [env('asr.revision', 5, { segment_id: 1, text: 'new', t0: 0, t1: 1 })]
  };
  m.handle(env('gap', null, { from_seq: 1, to_seq: 6, snapshot }));
  assert.deepEqual(m.finals.map(f => f.text), ['new']);
});

test('revisions nobody renders stay bounded (the sidebar never takes them)', () => {
  const m = new CaptionModel('s', 3);
  for (let i = 1; i <= 10; i++) {
    m.handle(env('asr.final', 2 * i, { segment_id: i, text: `a${i}` }));
    m.handle(env('asr.revision', 2 * i + 1, { segment_id: i, text: `b${i}` }));
  }
  assert.ok(m.takeRevised().length <= 3);
});
