import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { panelsPlugin } from './plugins/panels';
import { sidebarPlugin } from './plugins/sidebar';

export * from './tokens';

const plugins: JupyterFrontEndPlugin<any>[] = [panelsPlugin, sidebarPlugin];
export default plugins;
