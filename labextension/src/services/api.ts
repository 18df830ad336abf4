/** REST client of the loquilex server extension (docs/PROTOCOL.md), through jupyter_server auth. */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface ISessionInfo {
  id: string;
  state: string;
  owner: string | null;
  pid: number | null;
  created: number;
  out_dir: string;
  source: { kind: string; path?: string; realtime?: boolean; browser?: boolean };
  last_seq: number;
  finals: number;
  end: { kind: string; reason?: string } | null;
}

export interface IBrowserLease {
  sid: string;
  pcm_bytes: number;
  pcm_frames: number;
  connected: boolean;
  lease: number;
}

export interface IResources {
  server: Record<string, number>;
  sessions: Array<Record<string, number | string | null>>;
  by_kernel: Record<string, number>;
  channels: number;
}

/** An HTTP error of the API with its JSON code (e.g. "too-many-sessions"). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string
  ) {
    super(message);
  }
}

export class LoquilexApi {
  readonly settings: ServerConnection.ISettings;

  constructor(settings?: ServerConnection.ISettings) {
    this.settings = settings ?? ServerConnection.makeSettings();
  }

  url(...parts: string[]): string {
    return URLExt.join(this.settings.baseUrl, 'loquilex', 'api', ...parts);
  }

  wsUrl(sid: string): string {
    return URLExt.join(this.settings.wsUrl, 'loquilex', 'api', 'sessions', sid, 'events');
  }

  async request<T>(path: string[], init: RequestInit = {}): Promise<T> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.url(...path), init, this.settings);
    } catch (err) {
      throw new ApiError(0, 'network', `cannot reach the server: ${err}`);
    }
    const text = await response.text();
    let body: any = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = text;
    }
    if (!response.ok) {
      if (response.status === 404 && path.length === 1) {
        throw new ApiError(404, 'no-extension', 'the loquilex server extension is not running on this server');
      }
      const code = (body && body.error) || `http-${response.status}`;
      const message = (body && body.message) || response.statusText;
      throw new ApiError(response.status, code, message);
    }
    return body as T;
  }

  async sessions(): Promise<ISessionInfo[]> {
    return (await this.request<{ sessions: ISessionInfo[] }>(['sessions'])).sessions;
  }

  resources(): Promise<IResources> {
    return this.request<IResources>(['resources']);
  }

  leases(): Promise<{ lease: number; sessions: IBrowserLease[] }> {
    return this.request(['browser-sessions']);
  }

  /** A push session owned by this browser connection (stopped by the server's lease). */
  createBrowserSession(options: Record<string, unknown> = {}): Promise<ISessionInfo> {
    return this.request<ISessionInfo>(['browser-sessions'], { method: 'POST', body: JSON.stringify(options) });
  }

  stop(sid: string): Promise<ISessionInfo> {
    return this.request<ISessionInfo>(['sessions', sid], { method: 'DELETE' });
  }

  finalize(sid: string): Promise<void> {
    return this.request<void>(['sessions', sid, 'finalize'], { method: 'POST' });
  }

  captionUrl(sid: string, fmt: 'vtt' | 'srt' | 'txt'): string {
    return this.url('sessions', sid, `captions.${fmt}`);
  }

  async download(sid: string, fmt: 'vtt' | 'srt' | 'txt'): Promise<void> {
    const response = await ServerConnection.makeRequest(this.captionUrl(sid, fmt), {}, this.settings);
    if (!response.ok) {
      throw new ApiError(response.status, 'no-captions', `no ${fmt} captions yet`);
    }
    const blob = await response.blob();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `${sid}.${fmt}`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  /** Notebook path of each kernel, from jupyter_server's own /api/sessions. */
  async kernelNotebooks(): Promise<Map<string, string>> {
    const url = URLExt.join(this.settings.baseUrl, 'api', 'sessions');
    const map = new Map<string, string>();
    try {
      const response = await ServerConnection.makeRequest(url, {}, this.settings);
      if (response.ok) {
        for (const s of await response.json()) {
          if (s.kernel?.id) {
            map.set(s.kernel.id, s.path || s.name);
          }
        }
      }
    } catch {
      // owners then show as kernel ids
    }
    return map;
  }
}
