/**
 * The Captions sidebar: every session of this server (live text through one socket per running
 * session), their actions, and the server's and workers' resource counters with sparklines.
 * It holds nothing on the server but those sockets, all closed when it is disposed.
 */
import { Widget } from '@lumino/widgets';

import { ApiError, IResources, ISessionInfo, LoquilexApi } from '../services/api';
import { CaptionModel, clock } from '../services/captionModel';
import { EventSocket } from '../services/socket';
import { History, sparkline } from './sparkline';

export interface ISidebarHost {
  /** Sessions whose microphone is in this tab. */
  ownSessions(): Set<string>;
  captionMicrophone(): void;
  open(info: ISessionInfo): void;
  notify(message: string): void;
}

const COUNTERS: Array<[string, string, (r: IResources) => number]> = [
  ['threads', 'threads', r => Number(r.server.threads)],
  ['tasks', 'asyncio tasks', r => Number(r.server.tasks ?? 0)],
  ['fds', 'fds', r => Number(r.server.fds)],
  ['sockets', 'sockets', r => Number(r.server.sockets)],
  ['children', 'children', r => (Array.isArray(r.server.children) ? r.server.children.length : 0)],
  ['rss', 'RSS MiB', r => Number(r.server.rss) / 1048576],
  ['workers_rss', 'workers RSS MiB', r => r.sessions.reduce((a, s) => a + Number(s.rss ?? 0), 0) / 1048576]
];

interface IWatch {
  model: CaptionModel;
  socket: EventSocket;
}

export class CaptionsSidebar extends Widget {
  private readonly errorBox: HTMLElement;
  private readonly list: HTMLElement;
  private readonly endedList: HTMLElement;
  private readonly counters: HTMLElement;
  private readonly watches = new Map<string, IWatch>();
  private readonly history = new Map<string, History>();
  private readonly workerHistory = new Map<string, History>();
  private timer: number | null = null;
  private busy = false;
  private sessions: ISessionInfo[] = [];
  private leased = new Set<string>();
  private notebooks = new Map<string, string>();
  private ticks = 0;
  private refreshMs: number;

  constructor(
    private readonly api: LoquilexApi,
    private readonly host: ISidebarHost,
    refreshMs = 1000
  ) {
    super();
    this.id = 'loquilex-sidebar';
    this.addClass('lx-Sidebar');
    this.refreshMs = refreshMs;
    const head = this.el('div', 'lx-Sidebar-head', this.node);
    this.el('h2', 'lx-title', head).textContent = 'Captions';
    const mic = this.el('button', 'jp-Button jp-mod-styled jp-mod-accept lx-mic', head) as HTMLButtonElement;
    mic.type = 'button';
    mic.textContent = 'Caption my microphone';
    mic.title = 'Caption this browser’s microphone in a new live session';
    // the command runs synchronously inside this click: the AudioContext is made in the gesture
    mic.addEventListener('click', () => this.host.captionMicrophone());
    this.errorBox = this.el('div', 'lx-error', this.node);
    this.errorBox.setAttribute('role', 'alert');
    this.errorBox.hidden = true;
    this.el('h3', 'lx-subtitle', this.node).textContent = 'Sessions';
    this.list = this.el('ul', 'lx-sessions', this.node);
    this.list.setAttribute('aria-label', 'running caption sessions');
    this.el('h3', 'lx-subtitle', this.node).textContent = 'Recently ended';
    this.endedList = this.el('ul', 'lx-sessions lx-ended', this.node);
    this.endedList.setAttribute('aria-label', 'recently ended caption sessions');
    this.el('h3', 'lx-subtitle', this.node).textContent = 'Resources';
    this.counters = this.el('div', 'lx-counters', this.node);
  }

  setRefresh(ms: number): void {
    this.refreshMs = ms;
    if (this.timer !== null) {
      this.stopPolling();
      this.startPolling();
    }
  }

  protected onAfterAttach(): void {
    this.startPolling();
  }

  protected onBeforeDetach(): void {
    this.stopPolling();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.stopPolling();
    for (const sid of [...this.watches.keys()]) {
      this.unwatch(sid);
    }
    super.dispose();
  }

  async refresh(): Promise<void> {
    if (this.busy) {
      return;
    }
    this.busy = true;
    try {
      if (this.ticks++ % 5 === 0) {
        this.notebooks = await this.api.kernelNotebooks();
      }
      const [sessions, resources, leases] = await Promise.all([this.api.sessions(), this.api.resources(), this.api.leases()]);
      this.sessions = sessions;
      this.leased = new Set(leases.sessions.map(l => l.sid));
      this.errorBox.hidden = true;
      this.node.dataset.error = '';
      this.syncWatches();
      this.renderSessions();
      this.renderCounters(resources);
    } catch (err) {
      const e = err as ApiError;
      this.errorBox.hidden = false;
      this.node.dataset.error = e.code ?? 'failed';
      this.errorBox.textContent =
        e.code === 'no-extension' ? 'The loquilex server extension is not running on this Jupyter server (pip install loquilex-nb, then restart it).' : `Cannot list sessions: ${e.message}`;
    } finally {
      this.busy = false;
    }
  }

  private startPolling(): void {
    if (this.timer === null) {
      void this.refresh();
      this.timer = window.setInterval(() => void this.refresh(), this.refreshMs);
    }
  }

  private stopPolling(): void {
    if (this.timer !== null) {
      window.clearInterval(this.timer);
      this.timer = null;
    }
  }

  /** One socket per running session (for its latest final and partial); none for ended ones. */
  private syncWatches(): void {
    const running = new Map(this.sessions.filter(s => !s.end).map(s => [s.id, s]));
    for (const sid of [...this.watches.keys()]) {
      if (!running.has(sid)) {
        this.unwatch(sid);
      }
    }
    for (const [sid, info] of running) {
      if (this.watches.has(sid)) {
        continue;
      }
      const model = new CaptionModel(sid, 3);
      // from the latest seq: the server answers with a snapshot (gap), not the whole log
      const socket = new EventSocket({ url: this.api.wsUrl(sid), lastSeq: info.last_seq, reconnectFor: 10 });
      socket.event.connect((_, env) => model.handle(env));
      model.changed.connect(() => this.renderRow(sid));
      socket.open().catch(() => undefined);
      this.watches.set(sid, { model, socket });
    }
  }

  private unwatch(sid: string): void {
    const w = this.watches.get(sid);
    if (w) {
      w.socket.dispose();
      w.model.dispose();
      this.watches.delete(sid);
    }
  }

  private sourceKind(s: ISessionInfo): string {
    if (this.leased.has(s.id)) {
      return 'browser mic';
    }
    return s.source.kind === 'mic' ? 'server mic' : s.source.kind;
  }

  private ownerLabel(s: ISessionInfo): string {
    if (this.host.ownSessions().has(s.id)) {
      return 'this browser';
    }
    if (this.leased.has(s.id)) {
      return 'another browser';
    }
    if (s.owner) {
      return this.notebooks.get(s.owner) ?? `kernel ${s.owner.slice(0, 8)}`;
    }
    return '—';
  }

  private renderSessions(): void {
    const ids = new Set(this.sessions.map(s => s.id));
    for (const li of [...this.node.querySelectorAll<HTMLElement>('li.lx-session')]) {
      if (!ids.has(li.dataset.sid ?? '')) {
        li.remove();
      }
    }
    for (const s of this.sessions) {
      this.renderRow(s.id);
    }
    const running = this.sessions.filter(s => !s.end).length;
    this.list.dataset.count = String(running);
    this.endedList.dataset.count = String(this.sessions.length - running);
    if (!running && !this.list.querySelector('.lx-empty')) {
      this.el('li', 'lx-empty', this.list).textContent = 'No running sessions.';
    } else if (running) {
      this.list.querySelector('.lx-empty')?.remove();
    }
  }

  private renderRow(sid: string): void {
    const s = this.sessions.find(x => x.id === sid);
    if (!s) {
      return;
    }
    const parent = s.end ? this.endedList : this.list;
    let li = this.node.querySelector<HTMLElement>(`li.lx-session[data-sid="${sid}"]`);
    if (li && li.parentElement !== parent) {
      parent.prepend(li); // a session that ended moves to the "recently ended" list
    }
    if (!li) {
      li = this.el('li', 'lx-session', parent);
      li.dataset.sid = sid;
      li.tabIndex = -1;
      const top = this.el('div', 'lx-row-head', li);
      this.el('span', 'lx-state', top);
      this.el('span', 'lx-kind', top);
      this.el('span', 'lx-owner', top);
      this.el('span', 'lx-age', top);
      this.el('div', 'lx-final-line', li);
      this.el('div', 'lx-partial', li);
      const tools = this.el('div', 'lx-tools', li);
      this.action(tools, 'stop', 'Stop', `Stop session ${sid}`, () => this.api.stop(sid));
      this.action(tools, 'finalize', 'Finalize', `Finalize the current utterance of ${sid}`, () => this.api.finalize(sid));
      this.action(tools, 'open', 'Open', `Open the live captions of ${sid}`, async () => {
        const info = this.sessions.find(x => x.id === sid);
        if (info) {
          this.host.open(info);
        }
      });
      for (const fmt of ['vtt', 'srt', 'txt'] as const) {
        this.action(tools, fmt, fmt.toUpperCase(), `Download the ${fmt.toUpperCase()} captions of ${sid}`, () => this.api.download(sid, fmt));
      }
    }
    const w = this.watches.get(sid);
    const state = s.end ? s.state : (w?.model.state ?? s.state);
    li.dataset.state = state;
    li.dataset.kind = this.sourceKind(s);
    li.dataset.owner = this.ownerLabel(s);
    (li.querySelector('.lx-state') as HTMLElement).textContent = state;
    (li.querySelector('.lx-kind') as HTMLElement).textContent = this.sourceKind(s);
    (li.querySelector('.lx-owner') as HTMLElement).textContent = this.ownerLabel(s);
    (li.querySelector('.lx-age') as HTMLElement).textContent = clock(Date.now() / 1000 - s.created);
    const last = w?.model.latestFinal;
    (li.querySelector('.lx-final-line') as HTMLElement).textContent = last ? last.text : '';
    const partial = li.querySelector('.lx-partial') as HTMLElement;
    partial.textContent = w?.model.partial ?? '';
    partial.hidden = !partial.textContent;
    for (const b of li.querySelectorAll<HTMLButtonElement>('button.lx-btn-stop, button.lx-btn-finalize')) {
      b.disabled = !!s.end;
    }
  }

  private renderCounters(r: IResources): void {
    this.counters.textContent = '';
    const table = this.el('table', 'lx-counter-table', this.counters);
    for (const [key, label, get] of COUNTERS) {
      const value = get(r);
      let h = this.history.get(key);
      if (!h) {
        h = new History();
        this.history.set(key, h);
      }
      h.push(value);
      const tr = this.el('tr', 'lx-counter', table);
      tr.dataset.counter = key;
      tr.dataset.value = String(value);
      this.el('th', '', tr).textContent = label;
      this.el('td', 'lx-value', tr).textContent = Number.isInteger(value) ? String(value) : value.toFixed(1);
      this.el('td', '', tr).appendChild(sparkline(h.values));
    }
    const seen = new Set<string>();
    for (const w of r.sessions) {
      const sid = String(w.sid);
      seen.add(sid);
      let h = this.workerHistory.get(sid);
      if (!h) {
        h = new History();
        this.workerHistory.set(sid, h);
      }
      const rss = Number(w.rss ?? 0) / 1048576;
      h.push(rss);
      const tr = this.el('tr', 'lx-counter lx-worker', table);
      tr.dataset.sid = sid;
      this.el('th', '', tr).textContent = `worker ${sid.slice(0, 6)}`;
      this.el('td', 'lx-value', tr).textContent =
        `${rss.toFixed(0)} MiB · ${w.fds ?? '?'} fds · ${w.cpu_percent === null || w.cpu_percent === undefined ? '–' : Number(w.cpu_percent).toFixed(0) + '%'}`;
      this.el('td', '', tr).appendChild(sparkline(h.values));
    }
    for (const sid of [...this.workerHistory.keys()]) {
      if (!seen.has(sid)) {
        this.workerHistory.delete(sid);
      }
    }
    this.counters.dataset.channels = String(r.channels);
  }

  private action(parent: HTMLElement, name: string, label: string, tip: string, run: () => Promise<unknown>): void {
    const b = this.el('button', `jp-Button jp-mod-styled lx-btn lx-btn-${name}`, parent) as HTMLButtonElement;
    b.type = 'button';
    b.textContent = label;
    b.title = tip;
    b.setAttribute('aria-label', tip);
    b.addEventListener('click', () => {
      run()
        .then(() => this.refresh())
        .catch(err => this.host.notify(`${label} failed: ${(err as Error).message}`));
    });
  }

  private el(tag: string, cls: string, parent: HTMLElement): HTMLElement {
    const e = document.createElement(tag);
    if (cls) {
      e.className = cls;
    }
    parent.appendChild(e);
    return e;
  }
}
