import { Token } from '@lumino/coreutils';

import { ISessionInfo, LoquilexApi } from './services/api';

/** The caption panels of this tab: its microphone sessions and read-only live views. */
export interface ICaptionPanels {
  readonly api: LoquilexApi;
  ownSessions(): Set<string>;
  /** Start captioning the microphone; call synchronously from a user gesture. */
  captionMicrophone(): void;
  open(info: ISessionInfo): void;
}

export const ICaptionPanels = new Token<ICaptionPanels>('loquilex-labextension:ICaptionPanels', 'Caption panels of this browser tab');

export const CommandIDs = {
  captionMicrophone: 'loquilex:caption-microphone',
  stopMicrophone: 'loquilex:stop-microphone',
  showSidebar: 'loquilex:show-sidebar',
  refresh: 'loquilex:refresh-sessions'
};
