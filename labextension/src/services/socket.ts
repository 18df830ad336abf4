/**
 * One client of a session's event stream (docs/PROTOCOL.md): hello/welcome, acks, heartbeats,
 * and transparent resume after a dropped socket (hello {last_seq, resume_token}).
 *
 * Audio sent while the socket is down is buffered (up to `maxBufferBytes`) and resent in order
 * after the resume; what does not fit is dropped and reported through `audioLost`.
 */
import { ISignal, Signal } from '@lumino/signaling';

export interface IEnvelope {
  v: number;
  type: string;
  sid: string;
  seq: number | null;
  t_wall: number;
  t_mono: number;
  data: any;
}

export type SocketState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface IEventSocketOptions {
  url: string;
  /** Start from this seq (0: the whole log); a late joiner wanting only a snapshot passes the latest. */
  lastSeq?: number;
  maxBufferBytes?: number;
  /** Give up reconnecting after this many seconds without a welcome. */
  reconnectFor?: number;
}

const BACKOFF = [250, 500, 1000, 2000, 4000];

export class EventSocket {
  private ws: WebSocket | null = null;
  private token: string | null = null;
  private lastSeq: number;
  private acked = 0;
  private hbTimer: number | null = null;
  private retryTimer: number | null = null;
  private attempts = 0;
  private downSince = 0;
  private buffer: Uint8Array[] = [];
  private buffered = 0;
  private readonly maxBuffer: number;
  private readonly reconnectFor: number;
  private _state: SocketState = 'connecting';
  private _disposed = false;
  private _welcome: (() => void) | null = null;
  private _fail: ((err: Error) => void) | null = null;
  private _event = new Signal<this, IEnvelope>(this);
  private _stateChanged = new Signal<this, SocketState>(this);
  private _audioLost = new Signal<this, number>(this);
  /** Figures for the panel and the benchmark. */
  readonly stats = { framesSent: 0, bytesSent: 0, reconnects: 0, bytesLost: 0, bytesResent: 0 };

  constructor(private readonly options: IEventSocketOptions) {
    this.lastSeq = options.lastSeq ?? 0;
    this.maxBuffer = options.maxBufferBytes ?? 32000 * 20;
    this.reconnectFor = options.reconnectFor ?? 60;
  }

  get event(): ISignal<this, IEnvelope> {
    return this._event;
  }
  get stateChanged(): ISignal<this, SocketState> {
    return this._stateChanged;
  }
  /** Bytes of audio that could not be delivered (the socket stayed down too long). */
  get audioLost(): ISignal<this, number> {
    return this._audioLost;
  }
  get state(): SocketState {
    return this._state;
  }

  /** Opens the socket; resolves on the first welcome (so audio sent after it reaches the server). */
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      this._welcome = resolve;
      this._fail = reject;
      this.connect();
    });
  }

  sendJson(msg: Record<string, unknown>): boolean {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this._state === 'open') {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  sendAudio(bytes: Uint8Array): void {
    if (bytes.length === 0 || this._state === 'closed') {
      return;
    }
    if (this._state === 'open' && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(bytes);
      this.stats.framesSent++;
      this.stats.bytesSent += bytes.length;
      return;
    }
    this.buffer.push(bytes);
    this.buffered += bytes.length;
    while (this.buffered > this.maxBuffer && this.buffer.length) {
      const dropped = this.buffer.shift()!;
      this.buffered -= dropped.length;
      this.stats.bytesLost += dropped.length;
      this._audioLost.emit(dropped.length);
    }
  }

  /** Close for good (no resume). Idempotent. */
  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this.clearTimers();
    this.setState('closed');
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, 'client closed');
      this.ws = null;
    }
    this._fail?.(new Error('closed'));
    this._fail = null;
    this._welcome = null;
    this.buffer = [];
    this.buffered = 0;
    Signal.clearData(this);
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  private connect(): void {
    const ws = new WebSocket(this.options.url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'hello', last_seq: this.lastSeq, resume_token: this.token }));
    };
    ws.onmessage = msg => this.onMessage(msg.data);
    ws.onclose = ev => this.onClose(ev.code, ev.reason);
  }

  private onMessage(raw: unknown): void {
    if (typeof raw !== 'string') {
      return;
    }
    let env: IEnvelope;
    try {
      env = JSON.parse(raw);
    } catch {
      return;
    }
    if (env.type === 'welcome') {
      this.token = env.data.resume_token;
      this.attempts = 0;
      this.setState('open');
      this.startHeartbeat(env.data.hb_interval);
      this.flush();
      this._welcome?.();
      this._welcome = null;
      this._fail = null;
    }
    if (env.seq) {
      this.lastSeq = Math.max(this.lastSeq, env.seq);
      if (this.lastSeq - this.acked >= 20) {
        this.ack();
      }
    }
    this._event.emit(env);
  }

  private ack(): void {
    if (this.sendJson({ type: 'ack', seq: this.lastSeq })) {
      this.acked = this.lastSeq;
    }
  }

  private flush(): void {
    const pending = this.buffer;
    this.buffer = [];
    this.buffered = 0;
    for (const bytes of pending) {
      this.stats.bytesResent += bytes.length;
      this.sendAudio(bytes);
    }
  }

  private startHeartbeat(intervalS: number): void {
    if (this.hbTimer !== null) {
      window.clearInterval(this.hbTimer);
    }
    const every = Math.max(0.5, Math.min(5, (intervalS || 10) / 2)) * 1000;
    this.hbTimer = window.setInterval(() => {
      this.sendJson({ type: 'hb' });
      if (this.lastSeq > this.acked) {
        this.ack();
      }
    }, every);
  }

  private onClose(code: number, reason: string): void {
    this.ws = null;
    if (this.hbTimer !== null) {
      window.clearInterval(this.hbTimer);
      this.hbTimer = null;
    }
    // 1000: the session ended (after eos); 1008/4004: refused; 4010: another tab took over
    if (this._disposed || code === 1000 || code === 1008 || code === 4004 || code === 4010) {
      const fail = this._fail;
      this._fail = null;
      this.setState('closed');
      fail?.(new Error(reason || `closed (${code})`));
      return;
    }
    if (this._state !== 'reconnecting') {
      this.downSince = Date.now();
      this.stats.reconnects++;
    }
    if ((Date.now() - this.downSince) / 1000 > this.reconnectFor) {
      this.setState('closed');
      this._fail?.(new Error('the server is unreachable'));
      return;
    }
    this.setState('reconnecting');
    const delay = BACKOFF[Math.min(this.attempts++, BACKOFF.length - 1)];
    this.retryTimer = window.setTimeout(() => {
      this.retryTimer = null;
      if (!this._disposed) {
        this.connect();
      }
    }, delay);
  }

  private setState(state: SocketState): void {
    if (state !== this._state) {
      this._state = state;
      this._stateChanged.emit(state);
    }
  }

  private clearTimers(): void {
    if (this.hbTimer !== null) {
      window.clearInterval(this.hbTimer);
      this.hbTimer = null;
    }
    if (this.retryTimer !== null) {
      window.clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
  }
}
