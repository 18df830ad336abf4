/**
 * The browser microphone through an AudioWorklet. The worklet only batches the raw float
 * blocks; resampling to 16 kHz mono int16 happens in `PcmConverter` (unit-tested under node).
 */
import { PcmConverter } from './resample';

const BLOCK = 2048; // frames per message from the worklet (~46 ms at 44.1 kHz)

const WORKLET = `
class LoquilexCapture extends AudioWorkletProcessor {
  constructor() { super(); this.chunks = null; this.n = 0; }
  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    if (this.chunks === null || this.chunks.length !== input.length) {
      this.chunks = input.map(() => new Float32Array(${BLOCK}));
      this.n = 0;
    }
    const len = input[0].length;
    let off = 0;
    while (off < len) {
      const take = Math.min(len - off, ${BLOCK} - this.n);
      for (let c = 0; c < input.length; c++) {
        this.chunks[c].set(input[c].subarray(off, off + take), this.n);
      }
      this.n += take; off += take;
      if (this.n === ${BLOCK}) {
        this.port.postMessage(this.chunks, this.chunks.map(ch => ch.buffer));
        this.chunks = input.map(() => new Float32Array(${BLOCK}));
        this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor('loquilex-capture', LoquilexCapture);
`;

export type MicErrorKind = 'permission-denied' | 'no-microphone' | 'unsupported' | 'audio-failed';

export class MicError extends Error {
  constructor(
    readonly kind: MicErrorKind,
    message: string
  ) {
    super(message);
  }
}

/** Must be called synchronously inside a user gesture (click / key), before any await. */
export function audioContextForGesture(): AudioContext {
  // 'playback': larger render quanta batches; a capture has no use for low output latency and a
  // loaded machine then glitches less (an underrun inserts silence into the captured audio)
  const ctx = new AudioContext({ latencyHint: 'playback' });
  void ctx.resume();
  return ctx;
}

/**
 * A context at the microphone's own rate, so the browser does not resample (and, on a loaded
 * machine, glitch) between the capture and the graph. The gesture's context is kept when the
 * rates agree or a new one would not start (the page's user activation is sticky in browsers).
 */
export async function contextForStream(ctx: AudioContext, stream: MediaStream): Promise<AudioContext> {
  const rate = stream.getAudioTracks()[0]?.getSettings().sampleRate;
  if (!rate || rate === ctx.sampleRate) {
    return ctx;
  }
  let fresh: AudioContext | null = null;
  try {
    fresh = new AudioContext({ latencyHint: 'playback', sampleRate: rate });
    await Promise.race([fresh.resume(), new Promise(r => setTimeout(r, 500))]);
    if (fresh.state === 'running') {
      await ctx.close().catch(() => undefined);
      return fresh;
    }
  } catch {
    // an unsupported rate: keep the gesture's context (our resampler takes any rate)
  }
  await fresh?.close().catch(() => undefined);
  return ctx;
}

export async function openMicrophone(): Promise<MediaStream> {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new MicError('unsupported', 'this browser cannot capture audio here (a secure context — https or localhost — is needed)');
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: false
    });
  } catch (err: any) {
    const name = err?.name ?? '';
    if (name === 'NotAllowedError' || name === 'SecurityError') {
      throw new MicError('permission-denied', 'microphone permission was denied: allow it in the browser (the icon in the address bar) and try again');
    }
    if (name === 'NotFoundError' || name === 'OverconstrainedError') {
      throw new MicError('no-microphone', 'no microphone was found');
    }
    throw new MicError('audio-failed', `the microphone could not be opened: ${err}`);
  }
}

/** The running capture graph; `close()` releases the tracks, the graph and the context. */
export class MicCapture {
  private node: AudioWorkletNode | null = null;
  private source: MediaStreamAudioSourceNode | null = null;
  private sink: GainNode | null = null;
  private closed = false;
  readonly converter: PcmConverter;

  private constructor(
    private readonly ctx: AudioContext,
    private readonly stream: MediaStream
  ) {
    this.converter = new PcmConverter(ctx.sampleRate);
  }

  get sampleRate(): number {
    return this.ctx.sampleRate;
  }

  /** Starts delivering 16 kHz mono int16 LE bytes to `onPcm`. */
  static async start(ctx: AudioContext, stream: MediaStream, onPcm: (bytes: Uint8Array) => void): Promise<MicCapture> {
    const capture = new MicCapture(ctx, stream);
    const url = URL.createObjectURL(new Blob([WORKLET], { type: 'application/javascript' }));
    try {
      await ctx.audioWorklet.addModule(url);
    } finally {
      URL.revokeObjectURL(url);
    }
    if (ctx.state !== 'running') {
      await ctx.resume();
    }
    const node = new AudioWorkletNode(ctx, 'loquilex-capture', { numberOfInputs: 1, numberOfOutputs: 1 });
    node.port.onmessage = (ev: MessageEvent<Float32Array[]>) => {
      if (!capture.closed) {
        onPcm(capture.converter.push(ev.data));
      }
    };
    const source = ctx.createMediaStreamSource(stream);
    const sink = ctx.createGain();
    sink.gain.value = 0; // the graph must reach the destination to be pulled; stay silent
    source.connect(node);
    node.connect(sink);
    sink.connect(ctx.destination);
    capture.node = node;
    capture.source = source;
    capture.sink = sink;
    return capture;
  }

  async close(): Promise<void> {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.source?.disconnect();
    this.node?.disconnect();
    this.sink?.disconnect();
    if (this.node) {
      this.node.port.onmessage = null;
      this.node.port.close();
    }
    for (const track of this.stream.getTracks()) {
      track.stop();
    }
    await this.ctx.close().catch(() => undefined);
  }
}

/** Release a stream and context that never became a capture (an error before start). */
export async function releaseUnused(ctx: AudioContext | null, stream: MediaStream | null): Promise<void> {
  stream?.getTracks().forEach(t => t.stop());
  await ctx?.close().catch(() => undefined);
}
