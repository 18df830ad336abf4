/** Caption my microphone (command, palette, settings) and the main-area caption panels. */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { captionsIcon } from '../icon';
import { ISessionInfo, LoquilexApi } from '../services/api';
import { CaptionModel } from '../services/captionModel';
import { MicSession } from '../services/micSession';
import { EventSocket } from '../services/socket';
import { CommandIDs, ICaptionPanels } from '../tokens';
import { CaptionPanel } from '../widgets/captionPanel';

interface IMicSettings {
  partialInterval: number;
  vadSilence: number;
  maxBufferSeconds: number;
  activatePanel: boolean;
}

const DEFAULTS: IMicSettings = { partialInterval: 0.4, vadSilence: 0.45, maxBufferSeconds: 20, activatePanel: true };

class CaptionPanels implements ICaptionPanels {
  readonly api = new LoquilexApi();
  settings: IMicSettings = { ...DEFAULTS };
  private readonly mics = new Map<string, MicSession>();
  private readonly open_ = new Map<string, MainAreaWidget<CaptionPanel>>();

  constructor(private readonly app: JupyterFrontEnd) {}

  ownSessions(): Set<string> {
    return new Set([...this.mics.keys()].filter(Boolean));
  }

  get activeMic(): MicSession | null {
    return [...this.mics.values()].pop() ?? null;
  }

  captionMicrophone(): void {
    const mic = new MicSession(this.api, {
      sessionOptions: { partial_interval: this.settings.partialInterval, vad_silence: this.settings.vadSilence },
      maxBufferSeconds: this.settings.maxBufferSeconds
    });
    const started = mic.begin(); // first: the AudioContext is created inside the user's gesture
    const panel = new CaptionPanel(
      mic.model,
      {
        stop: () => void mic.stop(),
        finalize: () => mic.finalize(),
        download: fmt => void this.api.download(mic.sid, fmt).catch(err => Notification.error(String(err.message))),
        stats: () => ({ ...(mic.socket?.stats ?? {}), audioStartedAt: mic.audioStartedAt, sampleRate: mic.capture?.sampleRate ?? 0 })
      },
      'Microphone captions'
    );
    panel.addClass('lx-mod-mic');
    const widget = this.show(panel);
    // closing the panel stops the session (and releases the microphone)
    widget.disposed.connect(() => void mic.stop());
    mic.ended.connect(() => {
      this.mics.delete(mic.sid);
    });
    void started.then(() => {
      if (mic.sid && !mic.model.error) {
        this.mics.set(mic.sid, mic);
        this.open_.set(mic.sid, widget);
        widget.disposed.connect(() => this.open_.delete(mic.sid));
      }
    });
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.mics.values()].map(m => m.stop()));
  }

  open(info: ISessionInfo): void {
    const existing = this.open_.get(info.id);
    if (existing && !existing.isDisposed) {
      this.app.shell.activateById(existing.id);
      return;
    }
    const model = new CaptionModel(info.id);
    const socket = new EventSocket({ url: this.api.wsUrl(info.id) });
    socket.event.connect((_, env) => model.handle(env));
    socket.open().catch(err => model.notice('server', `live view closed: ${err.message}`));
    const panel = new CaptionPanel(
      model,
      {
        stop: () => void this.api.stop(info.id).catch(err => Notification.error(String(err.message))),
        finalize: () => void this.api.finalize(info.id).catch(err => Notification.error(String(err.message))),
        download: fmt => void this.api.download(info.id, fmt).catch(err => Notification.error(String(err.message)))
      },
      `Captions ${info.id}`
    );
    const widget = this.show(panel);
    this.open_.set(info.id, widget);
    widget.disposed.connect(() => {
      socket.dispose();
      model.dispose();
      this.open_.delete(info.id);
    });
  }

  private show(panel: CaptionPanel): MainAreaWidget<CaptionPanel> {
    const widget = new MainAreaWidget({ content: panel });
    widget.id = panel.id;
    widget.title.label = panel.title.label;
    widget.title.icon = captionsIcon;
    widget.title.closable = true;
    widget.addClass('lx-CaptionWidget');
    this.app.shell.add(widget, 'main', { mode: 'split-right' });
    if (this.settings.activatePanel) {
      this.app.shell.activateById(widget.id);
    }
    return widget;
  }
}

export const panelsPlugin: JupyterFrontEndPlugin<ICaptionPanels> = {
  id: 'loquilex-labextension:panels',
  description: 'Caption my microphone, and live caption panels in the main area.',
  autoStart: true,
  provides: ICaptionPanels,
  optional: [ICommandPalette, ISettingRegistry],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette | null, registry: ISettingRegistry | null): ICaptionPanels => {
    const panels = new CaptionPanels(app);
    app.commands.addCommand(CommandIDs.captionMicrophone, {
      label: 'Caption My Microphone',
      caption: 'Caption this browser’s microphone live in a new session',
      icon: captionsIcon,
      execute: () => panels.captionMicrophone()
    });
    app.commands.addCommand(CommandIDs.stopMicrophone, {
      label: 'Stop Captioning My Microphone',
      isEnabled: () => panels.ownSessions().size > 0,
      execute: () => panels.stopAll()
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.captionMicrophone, category: 'Captions' });
      palette.addItem({ command: CommandIDs.stopMicrophone, category: 'Captions' });
    }
    if (registry) {
      registry
        .load(panelsPlugin.id)
        .then(settings => {
          const apply = () => {
            panels.settings = { ...DEFAULTS, ...(settings.composite as unknown as Partial<IMicSettings>) };
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(err => console.warn('loquilex: settings not loaded', err));
    }
    return panels;
  }
};
