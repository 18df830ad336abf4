/**
 * Browser audio (any rate, any channel count, float32) → 16 kHz mono int16 little-endian,
 * the PCM the loquilex push protocol takes. Pure and streaming: no DOM, no Web Audio, so it is
 * unit-tested with `node --test` and runs on the main thread behind the AudioWorklet.
 */

export const TARGET_RATE = 16000;
const TABLE_RES = 512; // kernel table points per input sample

/** Average the channels into one (a stereo fake mic and real stereo mics alike). */
export function downmix(channels: ReadonlyArray<Float32Array>): Float32Array {
  if (channels.length === 0) {
    return new Float32Array(0);
  }
  if (channels.length === 1) {
    return channels[0].slice();
  }
  const n = channels[0].length;
  const out = new Float32Array(n);
  for (const ch of channels) {
    for (let i = 0; i < n; i++) {
      out[i] += ch[i];
    }
  }
  const k = 1 / channels.length;
  for (let i = 0; i < n; i++) {
    out[i] *= k;
  }
  return out;
}

/** Float samples in [-1, 1] → int16 (clipped, rounded to nearest). */
export function floatToInt16(x: Float32Array): Int16Array {
  const out = new Int16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = Math.max(-1, Math.min(1, x[i]));
    out[i] = Math.round(v < 0 ? v * 0x8000 : v * 0x7fff);
  }
  return out;
}

/** int16 samples as little-endian bytes, whatever the host's endianness. */
export function int16ToBytes(x: Int16Array): Uint8Array {
  const out = new Uint8Array(x.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < x.length; i++) {
    view.setInt16(2 * i, x[i], true);
  }
  return out;
}

/**
 * Streaming band-limited resampler: a Blackman-windowed sinc low-pass (cut-off just under the
 * lower Nyquist) evaluated at each output instant. Chunk boundaries are invisible: the output
 * of push(a); push(b) equals that of push(a ∪ b), because the filter's history is kept.
 */
export class Resampler {
  readonly inRate: number;
  readonly outRate: number;
  private readonly step: number; // input samples per output sample
  private readonly cutoff: number; // of the low-pass, in cycles per input sample
  private readonly half: number; // taps on each side
  private buf: Float32Array = new Float32Array(0); // input not yet fully used
  private bufStart = 0; // absolute index of buf[0]
  private next = 0; // absolute input position of the next output sample
  private readonly table: Float64Array;

  constructor(inRate: number, outRate: number = TARGET_RATE, halfTaps = 8) {
    if (!(inRate > 0) || !(outRate > 0)) {
      throw new Error(`bad sample rates ${inRate} → ${outRate}`);
    }
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate;
    this.cutoff = (0.5 * Math.min(1, outRate / inRate)) * 0.9;
    this.half = Math.ceil(halfTaps * Math.max(1, this.step));
    this.table = kernelTable(this.cutoff, this.half);
  }

  /** Feed input samples; returns every output sample that is now computable. */
  push(input: Float32Array): Float32Array {
    const merged = new Float32Array(this.buf.length + input.length);
    merged.set(this.buf);
    merged.set(input, this.buf.length);
    this.buf = merged;
    const end = this.bufStart + merged.length; // absolute index one past the last input
    const count = Math.max(0, Math.ceil((end - this.half - this.next) / this.step));
    const out = new Float32Array(count);
    for (let n = 0; n < count; n++) {
      out[n] = this.sample(this.next);
      this.next += this.step;
    }
    // keep what the next outputs still need
    const keepFrom = Math.max(0, Math.floor(this.next) - this.half);
    if (keepFrom > this.bufStart) {
      this.buf = this.buf.slice(keepFrom - this.bufStart);
      this.bufStart = keepFrom;
    }
    return out;
  }

  private sample(pos: number): number {
    const centre = Math.floor(pos);
    const h = this.half;
    const table = this.table;
    let acc = 0;
    let norm = 0;
    for (let k = centre - h + 1; k <= centre + h; k++) {
      // the kernel at t = pos - k, linearly interpolated in the table
      const u = (pos - k + h) * TABLE_RES;
      const j = Math.floor(u);
      const tap = table[j] + (u - j) * (table[j + 1] - table[j]);
      norm += tap;
      const i = k - this.bufStart;
      if (i >= 0 && i < this.buf.length) {
        acc += this.buf[i] * tap;
      }
    }
    return norm === 0 ? 0 : acc / norm;
  }
}

/** Windowed-sinc kernel sampled on [-half, half] at TABLE_RES points per input sample. */
function kernelTable(cutoff: number, half: number): Float64Array {
  const n = 2 * half * TABLE_RES + 2;
  const table = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    const t = j / TABLE_RES - half;
    const x = 2 * cutoff * t;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = Math.abs(t) >= half ? 0 : 0.42 + 0.5 * Math.cos((Math.PI * t) / half) + 0.08 * Math.cos((2 * Math.PI * t) / half);
    table[j] = sinc * w;
  }
  return table;
}

/** One AudioWorklet block (planar channels) → int16 LE bytes at 16 kHz mono. */
export class PcmConverter {
  private readonly resampler: Resampler;

  constructor(inRate: number) {
    this.resampler = new Resampler(inRate, TARGET_RATE);
  }

  push(channels: ReadonlyArray<Float32Array>): Uint8Array {
    return int16ToBytes(floatToInt16(this.resampler.push(downmix(channels))));
  }
}
