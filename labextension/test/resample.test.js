// Unit tests of the browser → 16 kHz mono int16 conversion (run: npm test, from make test).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { downmix, floatToInt16, int16ToBytes, PcmConverter, Resampler, TARGET_RATE } from '../lib/audio/resample.js';

function tone(freq, rate, seconds, amp = 0.5) {
  const n = Math.round(rate * seconds);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = amp * Math.sin((2 * Math.PI * freq * i) / rate);
  return x;
}

function rms(x, from = 0, to = x.length) {
  let s = 0;
  for (let i = from; i < to; i++) s += x[i] * x[i];
  return Math.sqrt(s / (to - from));
}

function concat(parts) {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

test('int16 conversion clips, rounds and is little-endian', () => {
  const x = Float32Array.from([0, 1, -1, 2, -2, 0.5, -0.5, 1 / 32767]);
  assert.deepEqual(Array.from(floatToInt16(x)), [0, 32767, -32768, 32767, -32768, 16384, -16384, 1]);
  const b = int16ToBytes(Int16Array.from([1, -2, 0x1234]));
  assert.deepEqual(Array.from(b), [1, 0, 0xfe, 0xff, 0x34, 0x12]);
});

test('downmix averages channels', () => {
  const m = downmix([Float32Array.from([1, 0, 0.5]), Float32Array.from([0, 1, -0.5])]);
  assert.deepEqual(Array.from(m), [0.5, 0.5, 0]);
  assert.equal(downmix([]).length, 0);
});

for (const rate of [44100, 48000, 16000, 22050]) {
  test(`${rate} Hz → 16 kHz: length, a 440 Hz tone kept, a 10 kHz tone removed`, () => {
    const r = new Resampler(rate);
    const seconds = 2;
    const y = concat([r.push(tone(440, rate, seconds)), r.push(new Float32Array(rate))]); // flush with 1 s of silence
    const expected = (seconds + 1) * TARGET_RATE;
    assert.ok(Math.abs(y.length - expected) <= 64, `${y.length} vs ${expected}`);
    // the tone's amplitude survives (0.5 peak → 0.354 rms) away from the edges
    const kept = rms(y, 1000, seconds * TARGET_RATE - 1000);
    assert.ok(Math.abs(kept - 0.5 / Math.SQRT2) < 0.01, `rms ${kept}`);
    // the same 440 Hz sine, sample for sample (group delay is zero: symmetric filter)
    for (let i = 2000; i < 2100; i++) {
      assert.ok(Math.abs(y[i] - 0.5 * Math.sin((2 * Math.PI * 440 * i) / TARGET_RATE)) < 0.01, `sample ${i}`);
    }
    if (rate > TARGET_RATE) {
      const r2 = new Resampler(rate);
      const z = r2.push(tone(10000, rate, 1));
      assert.ok(rms(z, 500, z.length - 500) < 0.02, `10 kHz leaked: ${rms(z, 500, z.length - 500)}`);
    }
  });
}

test('chunking does not change the output', () => {
  const x = tone(1000, 44100, 0.5);
  const whole = new Resampler(44100).push(x);
  const r = new Resampler(44100);
  const parts = [];
  for (let i = 0; i < x.length; i += 128) parts.push(r.push(x.subarray(i, i + 128)));
  const chunked = concat(parts);
  assert.equal(chunked.length, whole.length);
  for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(chunked[i] - whole[i]) < 1e-6, `sample ${i}`);
});

test('PcmConverter: stereo 44.1 kHz blocks → 16 kHz mono int16 bytes at the audio rate', () => {
  const c = new PcmConverter(44100);
  let bytes = 0;
  for (let i = 0; i < 44100 * 3; i += 2048) {
    const l = tone(300, 44100, 2048 / 44100);
    bytes += c.push([l, l]).length;
  }
  const expected = 3 * TARGET_RATE * 2;
  assert.ok(Math.abs(bytes - expected) < 2 * 2048, `${bytes} vs ${expected}`);
  assert.equal(bytes % 2, 0);
});

test('bad rates are refused', () => {
  assert.throws(() => new Resampler(0));
  assert.throws(() => new Resampler(NaN));
});
