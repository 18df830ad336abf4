/** What a caption view shows of one session, fed by the envelopes of an EventSocket. */
import { ISignal, Signal } from '@lumino/signaling';

import { IEnvelope } from './socket';

export interface IFinal {
  seq: number;
  segment: number | null;
  text: string;
  revised: boolean; // its text was replaced by an asr.revision (decoded again with later audio)
  t0: number;
  t1: number;
  latency: number | null;
  renderedAt: number; // Date.now() when it reached this model (the panel renders it in the same turn)
}

export interface INotice {
  kind: 'gap' | 'audio-lost' | 'reconnected' | 'server';
  text: string;
}

export class CaptionModel {
  readonly finals: IFinal[] = [];
  partial = '';
  state = 'starting';
  ended = false;
  readonly notices: INotice[] = [];
  error: { kind: string; message: string } | null = null;
  private _changed = new Signal<this, void>(this);

  constructor(
    readonly sid: string,
    private readonly keepFinals = 500
  ) {}

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get latestFinal(): IFinal | null {
    return this.finals.length ? this.finals[this.finals.length - 1] : null;
  }

  handle(env: IEnvelope): void {
    const data = env.data ?? {};
    switch (env.type) {
      case 'welcome':
        this.state = data.session?.state ?? this.state;
        break;
      case 'status':
        this.state = data.data?.state ?? this.state;
        break;
      case 'asr.partial':
        this.partial = data.text ?? '';
        break;
      case 'asr.final':
        this.addFinal(env);
        this.partial = '';
        break;
      case 'asr.revision':
        this.revise(env);
        break;
      case 'gap': {
        const snap = data.snapshot ?? {};
        this.finals.length = 0;
        for (const f of snap.finals ?? []) {
          this.addFinal(f);
        }
        for (const r of snap.revisions ?? []) {
          this.revise(r);
        }
        this.partial = snap.partial?.data?.text ?? '';
        this.state = snap.state ?? this.state;
        if (data.from_seq > 1) {
          this.notice('gap', `events ${data.from_seq}–${data.to_seq} were no longer available; showing the session's latest state`);
        }
        break;
      }
      case 'error':
        if (env.seq === null) {
          this.notice('server', `server: ${data.code}: ${data.detail}`);
        } else {
          this.error = { kind: data.data?.code ?? 'session-error', message: data.text || JSON.stringify(data.data ?? {}) };
        }
        break;
      case 'eos':
        this.ended = true;
        this.partial = '';
        break;
      default:
        return;
    }
    this._changed.emit();
  }

  notice(kind: INotice['kind'], text: string): void {
    this.notices.push({ kind, text });
    this._changed.emit();
  }

  fail(kind: string, message: string): void {
    this.error = { kind, message };
    this.state = 'error';
    this._changed.emit();
  }

  setState(state: string): void {
    this.state = state;
    this._changed.emit();
  }

  dispose(): void {
    Signal.clearData(this);
  }

  /** Finals whose text a revision replaced since the last call (a view updates them in place). */
  takeRevised(): IFinal[] {
    return this.revisedSince.splice(0);
  }

  private revisedSince: IFinal[] = [];

  /** The caption files take revisions in place: so does the view, or the two would differ. */
  private revise(env: IEnvelope): void {
    const d = env.data ?? {};
    const f = this.finals.find(x => x.segment !== null && x.segment === d.segment_id && x.seq < (env.seq ?? Infinity));
    if (f && typeof d.text === 'string' && d.text !== f.text) {
      f.text = d.text;
      f.revised = true;
      this.revisedSince.push(f);
      if (this.revisedSince.length > this.keepFinals) {
        this.revisedSince.shift(); // a model nobody renders (the sidebar's) stays bounded
      }
    }
  }

  private addFinal(env: IEnvelope): void {
    const d = env.data ?? {};
    if (env.seq !== null && this.finals.length && this.finals[this.finals.length - 1].seq >= env.seq) {
      return; // already shown (a snapshot followed by its own events)
    }
    this.finals.push({
      seq: env.seq ?? 0,
      segment: d.segment_id ?? null,
      text: d.text ?? '',
      revised: false,
      t0: d.t0 ?? 0,
      t1: d.t1 ?? 0,
      latency: d.data?.latency ?? null,
      renderedAt: Date.now()
    });
    if (this.finals.length > this.keepFinals) {
      this.finals.splice(0, this.finals.length - this.keepFinals);
    }
  }
}

export function clock(seconds: number): string {
  const s = Math.max(0, seconds);
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, '0')}:${(s - 60 * m).toFixed(1).padStart(4, '0')}`;
}
