/** The main-area live caption panel: finals with times, the moving partial, notices, files. */
import { Widget } from '@lumino/widgets';

import { CaptionModel, clock, IFinal } from '../services/captionModel';

export interface ICaptionPanelActions {
  stop?: () => void;
  finalize?: () => void;
  download: (fmt: 'vtt' | 'srt' | 'txt') => void;
  stats?: () => Record<string, number>;
}

export class CaptionPanel extends Widget {
  private readonly status: HTMLElement;
  private readonly errorBox: HTMLElement;
  private readonly noticeList: HTMLElement;
  private readonly finalList: HTMLOListElement;
  private readonly partialLine: HTMLElement;
  private readonly statsLine: HTMLElement;
  private readonly buttons: Record<string, HTMLButtonElement> = {};
  private shownFinals = 0;
  private shownNotices = 0;
  private statsTimer: number | null = null;

  constructor(
    readonly model: CaptionModel,
    private readonly actions: ICaptionPanelActions,
    title: string
  ) {
    super();
    this.addClass('lx-CaptionPanel');
    this.id = `loquilex-captions-${Math.random().toString(36).slice(2, 10)}`;
    this.title.label = title;
    this.title.closable = true;
    const head = this.el('div', 'lx-CaptionPanel-head', this.node);
    this.status = this.el('span', 'lx-state', head);
    this.status.setAttribute('role', 'status');
    this.status.setAttribute('aria-live', 'polite');
    const tools = this.el('span', 'lx-tools', head);
    if (actions.finalize) {
      this.button(tools, 'finalize', 'Finalize', 'End the current utterance now', actions.finalize);
    }
    if (actions.stop) {
      this.button(tools, 'stop', 'Stop', 'Stop captioning and the session', actions.stop);
    }
    for (const fmt of ['vtt', 'srt', 'txt'] as const) {
      this.button(tools, fmt, fmt.toUpperCase(), `Download the ${fmt.toUpperCase()} caption file`, () => actions.download(fmt));
    }
    this.errorBox = this.el('div', 'lx-error', this.node);
    this.errorBox.setAttribute('role', 'alert');
    this.noticeList = this.el('ul', 'lx-notices', this.node);
    const body = this.el('div', 'lx-CaptionPanel-body', this.node);
    body.setAttribute('aria-label', 'captions');
    this.finalList = this.el('ol', 'lx-finals', body) as HTMLOListElement;
    this.partialLine = this.el('div', 'lx-partial', body);
    this.partialLine.setAttribute('aria-live', 'off');
    this.statsLine = this.el('div', 'lx-stats', this.node);
    model.changed.connect(this.render, this);
    this.render();
    if (actions.stats) {
      this.statsTimer = window.setInterval(() => this.renderStats(), 1000);
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    if (this.statsTimer !== null) {
      window.clearInterval(this.statsTimer);
    }
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  private render(): void {
    const m = this.model;
    this.node.dataset.sid = m.sid;
    this.node.dataset.state = m.state;
    this.status.textContent = `${m.sid ? m.sid + ' · ' : ''}${m.state}${m.ended ? ' (ended)' : ''}`;
    this.status.dataset.state = m.state;
    this.errorBox.hidden = !m.error;
    this.errorBox.dataset.kind = m.error?.kind ?? '';
    this.errorBox.textContent = m.error ? m.error.message : '';
    const live = !m.ended && m.state !== 'error' && m.state !== 'stopped';
    for (const name of ['stop', 'finalize']) {
      if (this.buttons[name]) {
        this.buttons[name].disabled = !live || !m.sid;
      }
    }
    for (const fmt of ['vtt', 'srt', 'txt']) {
      this.buttons[fmt].disabled = !m.sid;
    }
    if (this.shownFinals > m.finals.length) {
      this.finalList.textContent = '';
      this.shownFinals = 0;
    }
    for (const f of m.finals.slice(this.shownFinals)) {
      const li = document.createElement('li');
      li.className = 'lx-final';
      li.dataset.seq = String(f.seq);
      li.dataset.t0 = String(f.t0);
      li.dataset.t1 = String(f.t1);
      li.dataset.renderedAt = String(Date.now());
      li.dataset.latency = f.latency === null ? '' : String(f.latency);
      const time = this.el('time', 'lx-time', li);
      time.textContent = `${clock(f.t0)}–${clock(f.t1)}`;
      const text = this.el('span', 'lx-text', li);
      text.textContent = f.text;
      this.markRevised(li, f);
      this.finalList.appendChild(li);
    }
    this.shownFinals = m.finals.length;
    for (const f of m.takeRevised()) {
      const li = this.finalList.querySelector<HTMLElement>(`li.lx-final[data-seq="${f.seq}"]`);
      if (li) {
        (li.querySelector('.lx-text') as HTMLElement).textContent = f.text;
        this.markRevised(li, f);
      }
    }
    for (const n of m.notices.slice(this.shownNotices)) {
      const li = this.el('li', `lx-notice lx-notice-${n.kind}`, this.noticeList);
      li.textContent = n.text;
    }
    this.shownNotices = m.notices.length;
    this.partialLine.textContent = m.partial;
    this.partialLine.hidden = !m.partial;
    this.partialLine.scrollIntoView?.({ block: 'nearest' });
  }

  private renderStats(): void {
    const s = this.actions.stats?.();
    if (!s) {
      return;
    }
    for (const [k, v] of Object.entries(s)) {
      this.statsLine.dataset[k] = String(v);
    }
    this.statsLine.textContent =
      `sent ${s.framesSent} frames, ${(s.bytesSent / 1024).toFixed(0)} KiB` +
      (s.reconnects ? ` · ${s.reconnects} reconnect(s), ${(s.bytesLost / 32000).toFixed(1)} s lost` : '');
  }

  private markRevised(li: HTMLElement, f: IFinal): void {
    if (f.revised) {
      li.dataset.revised = 'true';
      li.classList.add('lx-revised');
      li.title = 'revised: decoded again with the audio that followed it';
    }
  }

  private button(parent: HTMLElement, name: string, label: string, tip: string, onClick: () => void): void {
    const b = this.el('button', `jp-Button jp-mod-styled lx-btn lx-btn-${name}`, parent) as HTMLButtonElement;
    b.type = 'button';
    b.textContent = label;
    b.title = tip;
    b.setAttribute('aria-label', tip);
    b.addEventListener('click', onClick);
    this.buttons[name] = b;
  }

  private el(tag: string, cls: string, parent: HTMLElement): HTMLElement {
    const e = document.createElement(tag);
    e.className = cls;
    parent.appendChild(e);
    return e;
  }
}
