/**
 * "Caption my microphone": one push session owned by this browser tab. Order matters:
 * the AudioContext is made in the user's gesture (by the caller); the capture starts as soon as
 * the microphone is granted, and its audio is held until the socket is open (welcome received),
 * then sent in order; `stop()` releases mic, graph, socket and session.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { audioContextForGesture, contextForStream, MicCapture, MicError, openMicrophone, releaseUnused } from '../audio/capture';
import { ApiError, LoquilexApi } from './api';
import { CaptionModel } from './captionModel';
import { EventSocket } from './socket';

export interface IMicOptions {
  sessionOptions: Record<string, unknown>;
  maxBufferSeconds: number;
}

export class MicSession {
  readonly model: CaptionModel;
  sid = '';
  socket: EventSocket | null = null;
  capture: MicCapture | null = null;
  audioStartedAt = 0; // Date.now() of the first audio chunk sent (audio time 0 of the session)
  private stopping: Promise<void> | null = null;
  private _ended = new Signal<this, void>(this);

  constructor(
    private readonly api: LoquilexApi,
    private readonly options: IMicOptions
  ) {
    this.model = new CaptionModel('');
  }

  get ended(): ISignal<this, void> {
    return this._ended;
  }

  /** Call synchronously from the click / key handler: the AudioContext is created first. */
  begin(): Promise<void> {
    const ctx = audioContextForGesture();
    return this.run(ctx);
  }

  private async run(ctx: AudioContext): Promise<void> {
    let stream: MediaStream | null = null;
    try {
      this.model.setState('asking for the microphone');
      stream = await openMicrophone();
      ctx = await contextForStream(ctx, stream);
      // The microphone is live from here: capture at once and hold the audio until the socket
      // exists. Creating the session (a worker process) takes a second or more on a loaded
      // server, and a person starts speaking when the browser shows that it is recording.
      const early: Uint8Array[] = [];
      const maxBufferBytes = Math.round(this.options.maxBufferSeconds * 32000); // 16 kHz int16
      let earlyBytes = 0;
      let socket: EventSocket | null = null;
      this.capture = await MicCapture.start(ctx, stream, bytes => {
        if (!this.audioStartedAt) {
          this.audioStartedAt = Date.now();
        }
        if (socket) {
          socket.sendAudio(bytes);
          return;
        }
        early.push(bytes);
        earlyBytes += bytes.length;
        while (earlyBytes > maxBufferBytes && early.length) {
          earlyBytes -= early.shift()!.length;
          this.onAudioLost('the session took too long to start: the first audio was lost');
        }
      });
      stream = null; // the capture owns it now
      this.throwIfStopped();
      this.model.setState('creating a session');
      const info = await this.api.createBrowserSession(this.options.sessionOptions);
      this.sid = info.id;
      (this.model as { sid: string }).sid = info.id;
      this.throwIfStopped();
      socket = new EventSocket({ url: this.api.wsUrl(info.id), maxBufferBytes });
      this.socket = socket;
      socket.event.connect((_, env) => this.model.handle(env));
      socket.stateChanged.connect((_, state) => this.onSocketState(state));
      socket.audioLost.connect(() => this.onAudioLost());
      // held in the socket's buffer, in order, and sent once the welcome arrives
      for (const bytes of early.splice(0)) {
        socket.sendAudio(bytes);
      }
      await socket.open();
      this.throwIfStopped();
      this.model.setState('live');
    } catch (err) {
      await releaseUnused(this.capture ? null : ctx, stream);
      if (this.stopping) {
        // stopped while starting: what was created after stop() looked is ended here
        this.socket?.dispose();
        if (this.sid) {
          await this.api.stop(this.sid).catch(() => undefined);
        }
        return;
      }
      if (err instanceof MicError) {
        this.model.fail(err.kind, err.message);
      } else if (err instanceof ApiError) {
        const kind = err.code === 'too-many-sessions' ? 'session-limit' : err.code;
        const message = err.code === 'too-many-sessions' ? `the server's session limit is reached: ${err.message}` : err.message;
        this.model.fail(kind, message);
      } else {
        this.model.fail('failed', String((err as Error)?.message ?? err));
      }
      await this.stop();
    }
  }

  private throwIfStopped(): void {
    if (this.stopping) {
      throw new Error('stopped');
    }
  }

  finalize(): void {
    this.socket?.sendJson({ type: 'finalize' });
  }

  /** Stop capture, end the session (its last finals still arrive), release everything. */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = this.doStop();
    }
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    await this.capture?.close();
    const socket = this.socket;
    if (socket && !socket.isDisposed && socket.state === 'open') {
      this.model.setState('stopping');
      // the server sends the last finals then eos and closes with 1000
      const closed = new Promise<void>(resolve => {
        socket.stateChanged.connect((_, st) => st === 'closed' && resolve());
        window.setTimeout(resolve, 8000);
      });
      socket.sendJson({ type: 'stop' });
      await closed;
    } else if (this.sid) {
      await this.api.stop(this.sid).catch(() => undefined);
    }
    socket?.dispose();
    if (this.model.state !== 'error') {
      this.model.setState('stopped');
    }
    this._ended.emit();
  }

  private onSocketState(state: string): void {
    if (state === 'reconnecting') {
      this.model.notice('reconnected', 'connection lost: reconnecting (audio is buffered meanwhile)');
    } else if (state === 'open' && this.socket && this.socket.stats.reconnects > 0) {
      const lost = this.socket.stats.bytesLost;
      this.model.notice('reconnected', lost ? `reconnected; ${(lost / 32000).toFixed(1)} s of audio was lost` : 'reconnected; no audio was lost');
    } else if (state === 'closed' && !this.stopping) {
      if (!this.model.ended) {
        this.model.fail('disconnected', 'the connection to the server was lost; the session was stopped by the server');
      }
      void this.stop();
    }
  }

  private lostReported = false;
  private onAudioLost(text = 'the connection stayed down too long: some audio is being lost'): void {
    if (!this.lostReported) {
      this.lostReported = true;
      this.model.notice('audio-lost', text);
    }
  }
}
