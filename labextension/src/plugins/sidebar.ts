/** The Captions sidebar in the left area. */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { captionsIcon } from '../icon';
import { CommandIDs, ICaptionPanels } from '../tokens';
import { CaptionsSidebar } from '../widgets/sidebar';

export const sidebarPlugin: JupyterFrontEndPlugin<void> = {
  id: 'loquilex-labextension:sidebar',
  description: 'The Captions sidebar: every session of this server, live, and its resource counters.',
  autoStart: true,
  requires: [ICaptionPanels],
  optional: [ILayoutRestorer, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    panels: ICaptionPanels,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    registry: ISettingRegistry | null
  ) => {
    const sidebar = new CaptionsSidebar(panels.api, {
      ownSessions: () => panels.ownSessions(),
      captionMicrophone: () => void app.commands.execute(CommandIDs.captionMicrophone),
      open: info => panels.open(info),
      notify: message => Notification.error(message)
    });
    sidebar.title.icon = captionsIcon;
    sidebar.title.caption = 'Captions';
    app.shell.add(sidebar, 'left', { rank: 600 });
    restorer?.add(sidebar, sidebar.id);
    app.commands.addCommand(CommandIDs.showSidebar, {
      label: 'Show Captions Sidebar',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Caption Sessions',
      execute: () => sidebar.refresh()
    });
    if (palette) {
      palette.addItem({ command: CommandIDs.showSidebar, category: 'Captions' });
      palette.addItem({ command: CommandIDs.refresh, category: 'Captions' });
    }
    let opened = false;
    if (registry) {
      registry
        .load(sidebarPlugin.id)
        .then(settings => {
          const apply = () => {
            sidebar.setRefresh(Number(settings.composite.refreshInterval ?? 1000));
            if (settings.composite.openOnStart && !opened) {
              opened = true;
              void app.restored.then(() => {
                // show it without taking the focus: notebook commands act on the focused widget
                const current = app.shell.currentWidget;
                app.shell.activateById(sidebar.id);
                if (current && current !== sidebar) {
                  app.shell.activateById(current.id);
                }
              });
            }
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(err => console.warn('loquilex: settings not loaded', err));
    }
  }
};
