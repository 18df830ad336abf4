"""(Re)generate the notebooks 01-05 with nbformat and store their outputs by running them with nbclient.

    .venv/bin/python notebooks/make_notebooks.py            # all of them
    .venv/bin/python notebooks/make_notebooks.py 04 05      # some (by number or name)
    .venv/bin/python notebooks/make_notebooks.py --no-execute

The sources below are the only place to edit these notebooks: hand edits are lost the next time
this runs. `make test` runs them with nbval (`--nbval-lax`): cells marked `# NBVAL_CHECK_OUTPUT`
must print exactly what is stored, so those cells print only deterministic lines (no times, ids,
pids, ports or transcripts). nbval runs each notebook in a bare kernel and SIGKILLs it at the
end, so every notebook cleans up in its last cell and checks that the kernel's process counters
(threads, children, fds, sockets) are back to the baseline of its first cell
(`loquilex_nb.testing.baseline.Baseline`, which leaves out the subshells JupyterLab adds to a kernel).
`tests/ui/test_browser.py` runs every notebook in real JupyterLab as well.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
TIMEOUT = 180  # seconds per cell

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": "{}.{}.{}".format(*sys.version_info[:3]),
    },
}


def md(text: str) -> str:
    return "md:" + textwrap.dedent(text).strip()


def code(text: str) -> str:
    return "code:" + textwrap.dedent(text).strip()


# -- shared cells ------------------------------------------------------------------------------
BACK_TO_BASELINE = code(
    """
    # NBVAL_CHECK_OUTPUT
    shutil.rmtree(tmp, ignore_errors=True)
    baseline.check(timeout=20)  # polls while closed things settle; AssertionError if they do not
    print('back to baseline')
    """
)

SERVER_HELPERS = code(
    '''
    def gone(pids, timeout=5.0):
        """Wait until none of `pids` runs (a zombie counts as gone); return those still running."""
        deadline = time.monotonic() + timeout
        while True:
            left = []
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        left.append(pid)
                except psutil.NoSuchProcess:
                    pass
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)


    SERVERS = []


    def Server(home):
        """`jupyter server` with only the loquilex extension, in a subprocess with its own dirs under `home`.

        It gets SIGTERM if this kernel dies (nbval SIGKILLs the kernel at the end, and a failed
        cell must not leave a server running); the last cell closes every one.
        """
        server = JupyterServer(home, args=['--LoquilexApp.sweep_interval=0.5'])
        SERVERS.append(server)
        return server
    '''
)

COMMON_IMPORTS = """
import json, shutil, signal, tempfile, time
from pathlib import Path

import psutil
from loquilex_nb.testing.baseline import Baseline
from loquilex_nb.testing.jupyter import JupyterServer

baseline = Baseline()  # this kernel's threads, children, fds and sockets now
tmp = Path(tempfile.mkdtemp(prefix='{prefix}'))
"""


# -- 01: quickstart ----------------------------------------------------------------------------
NB01 = [
    md(
        """
        # Quickstart: caption the bundled sample

        `lx.session(...)` captions an audio file (or audio you push, or a microphone), gives
        its events as they come and writes caption files (`captions.vtt`, `captions.srt`,
        `final.txt`). The same code runs in two places:

        * **server mode**: in JupyterLab started by `make run`, the kernel finds the Jupyter
          server's `loquilex` extension and the session runs there, owned by this kernel (it
          stops when the kernel restarts or shuts down). A file the server cannot reach, such as
          this sample inside the installed package, is decoded here and streamed to the server.
          The caption files go to `loquilex-captions/` under the server's root.
        * **embedded mode**: in a kernel no such server started (nbval in `make test`, a plain
          `jupyter console`), this kernel's own supervisor runs the session's worker process, and
          the caption files go to `loquilex-captions/` in the working directory.

        The last cell checks that the session left nothing behind in this kernel.
        """
    ),
    code(
        """
        import shutil
        from pathlib import Path
        import loquilex_nb as lx
        from loquilex_nb.testing.baseline import Baseline

        baseline = Baseline()  # this kernel's threads, children, fds and sockets now
        sample = Path(lx.__file__).parent / 'data' / 'sample.wav'
        """
    ),
    code(
        """
        # realtime=False: as fast as the machine goes; True would take as long as the audio
        with lx.session(str(sample), realtime=False) as s:
            print('runs in', 'the Jupyter server' if s.backend.name == 'server' else 'this kernel')
            for ev in s.events():
                if ev.type == 'asr.final':
                    print(f'[{ev.t0:5.2f}] {ev.text}')
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        import jiwer, re
        norm = lambda t: ' '.join(re.sub(r"[^a-z0-9' ]", ' ', t.lower()).split())
        reference = sample.with_suffix('.txt').read_text()
        print(s.end.kind, len(s.finals), jiwer.wer(norm(reference), norm(s.text)) < 0.15)
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        print(sorted(p.name for p in s.outputs.values()))
        print(s.outputs['vtt'].read_text().splitlines()[0])
        """
    ),
    code(
        """
        import webvtt
        for cue in webvtt.read(str(s.outputs['vtt']))[:3]:
            print(cue.start, cue.end, cue.text)
        """
    ),
    md("Clean up and check that the counters are back to baseline (threads, child processes, fds, sockets)."),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        tmp = s.outputs['vtt'].parent  # this session's caption folder
        shutil.rmtree(tmp, ignore_errors=True)
        baseline.check(timeout=20)
        print('back to baseline')
        """
    ),
]


# -- 02: resource monitor ----------------------------------------------------------------------
NB02 = [
    md(
        """
        # Resource monitor: watch the counters return

        A live `ResourceMonitor` of this kernel and, in JupyterLab with the extension (server
        mode), of the Jupyter server and each session's worker. Start two sessions, watch the
        child processes, fds and threads grow, stop them and watch everything come back.
        `mon.close()` stops the monitor's updater; its last rendering stays.
        """
    ),
    code(
        """
        import shutil, time
        import loquilex_nb as lx
        from loquilex_nb.testing.baseline import Baseline
        from loquilex_nb import widgets  # one-time import costs are not leaks

        baseline = Baseline()  # this kernel's threads, children, fds and sockets now
        mon = lx.ResourceMonitor(interval=0.5, server='auto')
        mon
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        sessions = [lx.session(lx.PushSource()).start() for i in range(2)]
        deadline = time.monotonic() + 60
        while any(s.status == 'starting' for s in sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # a few samples with the sessions running
        mon.refresh()
        print('sessions running:', sum(s.status == 'running' for s in sessions))
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        folders = [s.outputs['vtt'].parent for s in sessions]
        for s in sessions:
            s.close()
        time.sleep(1.5)  # a few samples after the stop
        mon.refresh()
        print('sessions running:', sum(s.status == 'running' for s in sessions))
        print('ended:', sorted({s.end.kind for s in sessions}))
        """
    ),
    md("Clean up and check that this kernel's counters are back to their baseline."),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        mon.close()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        baseline.check(timeout=20)
        print('back to baseline')
        """
    ),
]


# -- 03: kernel restart ------------------------------------------------------------------------
NB03 = [
    md(
        """
        # A kernel restart stops the kernel's server-side sessions

        Starts a Jupyter server with the `loquilex` extension as a subprocess, starts a kernel
        through its REST API and runs `lx.session(lx.PushSource()).start()` *inside that kernel*
        (sent over the kernel's websocket channels, as JupyterLab does). There `lx` detects server
        mode: the kernel's `JPY_PARENT_PID` is the server, whose runtime file says where it
        listens. So the server runs the session, owned by the kernel. Restarting the kernel
        (`POST /api/kernels/<id>/restart`) then stops the session and its worker, and so does
        shutting the kernel down. Ends by stopping the server and checking that this kernel's
        process counters are back to baseline. `make test` runs it with nbval.
        """
    ),
    code(COMMON_IMPORTS.format(prefix="lx-nb03-")),
    SERVER_HELPERS,
    code(
        '''
        import datetime, uuid
        import websocket  # websocket-client, a dependency of jupyter_server


        def run_in_kernel(server, kernel_id, source, timeout=60):
            """Execute `source` in a kernel of `server` over its websocket channels; return its stdout."""
            ws = websocket.create_connection(
                f'ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}',
                header=[f'Authorization: token {server.token}'], timeout=timeout)
            try:
                msg_id = uuid.uuid4().hex
                ws.send(json.dumps({
                    'header': {'msg_id': msg_id, 'msg_type': 'execute_request', 'username': '', 'session': uuid.uuid4().hex,
                               'date': datetime.datetime.now(datetime.timezone.utc).isoformat(), 'version': '5.3'},
                    'parent_header': {}, 'metadata': {}, 'channel': 'shell', 'buffers': [],
                    'content': {'code': source, 'silent': False, 'store_history': False, 'user_expressions': {},
                                'allow_stdin': False, 'stop_on_error': True},
                }))
                out, reply, idle = [], None, False
                deadline = time.monotonic() + timeout
                while reply is None or not idle:
                    ws.settimeout(max(0.1, deadline - time.monotonic()))
                    raw = ws.recv()
                    if not isinstance(raw, str):
                        continue  # binary frames carry buffers; none of ours do
                    msg = json.loads(raw)
                    if msg.get('parent_header', {}).get('msg_id') != msg_id:
                        continue
                    kind, content = msg['msg_type'], msg['content']
                    if kind == 'stream':
                        out.append(content['text'])
                    elif kind == 'error':
                        out.append('\\n'.join(content['traceback']))
                    elif kind == 'execute_reply':
                        reply = content
                    elif kind == 'status' and content['execution_state'] == 'idle':
                        idle = True
            finally:
                ws.close()
            assert reply['status'] == 'ok', ''.join(out)
            return ''.join(out)


        def kernel_pid(server, kernel_id):
            """The pid of the server's kernel process for `kernel_id` (it was given its connection file)."""
            for child in psutil.Process(server.proc.pid).children(recursive=True):
                try:
                    if any(f'kernel-{kernel_id}.json' in arg for arg in child.cmdline()):
                        return child.pid
                except psutil.NoSuchProcess:
                    pass
            return None
        '''
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        srv = Server(tmp / 'server').start()
        status, kernel = srv.request('POST', '/api/kernels', {'name': 'python3'})
        kid = kernel['id']
        print('kernel started:', status == 201)
        """
    ),
    md("Run a session inside that kernel: `lx` picks the server that started it, and tags the session with the kernel's id."),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        IN_KERNEL = '''
        import loquilex_nb as lx
        s = lx.session(lx.PushSource()).start()
        print('backend:', s.backend.name)
        print('owned by this kernel:', s.backend.kernel_id == {kid!r})
        '''
        print(run_in_kernel(srv, kid, IN_KERNEL.format(kid=kid)), end='')
        info = srv.wait_session(lambda s: s['owner'] == kid and s['state'] == 'running')
        old_kernel_pid = kernel_pid(srv, kid)
        print('server session running, owner == kernel id:', info['owner'] == kid)
        """
    ),
    md("Restart the kernel through the REST API, as JupyterLab's *Restart Kernel* does."),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        status, _ = srv.request('POST', f'/api/kernels/{kid}/restart')
        print('kernel restarted:', status == 200 and kernel_pid(srv, kid) not in (None, old_kernel_pid))
        ended = srv.wait_session(lambda s: s['id'] == info['id'] and s['state'] in ('stopped', 'failed'))
        print('session stopped after kernel restart:', ended['state'] == 'stopped', ended['end']['kind'])
        print('worker gone:', gone([info['pid']]) == [])
        """
    ),
    md("The restarted kernel starts afresh. Its new session ends with the kernel's shutdown (`DELETE /api/kernels/<id>`)."),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        print(run_in_kernel(srv, kid, IN_KERNEL.format(kid=kid)), end='')
        info2 = srv.wait_session(lambda s: s['owner'] == kid and s['state'] == 'running')
        last_kernel_pid = kernel_pid(srv, kid)
        status, _ = srv.request('DELETE', f'/api/kernels/{kid}')
        print('kernel shut down:', status == 204 and gone([last_kernel_pid]) == [])
        ended2 = srv.wait_session(lambda s: s['id'] == info2['id'] and s['state'] in ('stopped', 'failed'))
        print('session stopped after kernel shutdown:', ended2['state'] == 'stopped', ended2['end']['kind'])
        print('worker gone:', gone([info2['pid']]) == [])
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        code = srv.stop(signal.SIGTERM)
        print('server exited on SIGTERM:', code in (0, -signal.SIGTERM))
        print('kernels left:', gone([p for p in (old_kernel_pid, last_kernel_pid) if p]))
        """
    ),
    md("Clean up and check that the counters are back to baseline (threads, child processes, fds, sockets)."),
    code(
        """
        for server in SERVERS:
            server.close()
        """
    ),
    BACK_TO_BASELINE,
]


# -- 04: server shutdown -----------------------------------------------------------------------
NB04 = [
    md(
        """
        # Stopping the server leaves no worker behind

        Starts a Jupyter server with the `loquilex` extension as a subprocess, creates push
        sessions through its REST API (`POST loquilex/api/sessions`) and ends the server two
        ways:

        * **SIGTERM**: the server shuts down in order, and the extension's `stop_extension` stops
          every session and reaps its worker before the server exits;
        * **SIGKILL**: nothing runs in the server; each worker's parent-death signal
          (`PR_SET_PDEATHSIG`) takes it down within a few seconds.

        Ends by checking that this kernel's process counters are back to baseline. `make test`
        runs it with nbval.
        """
    ),
    code(COMMON_IMPORTS.format(prefix="lx-nb04-")),
    SERVER_HELPERS,
    md("## SIGTERM: an orderly shutdown"),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        srv = Server(tmp / 'term').start()
        pids = srv.create_push_sessions(2)
        print(len(pids), 'sessions running, workers are the server\\'s children:',
              set(pids) <= {c.pid for c in psutil.Process(srv.proc.pid).children()})
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        code = srv.stop(signal.SIGTERM)
        print('server exited on SIGTERM:', code in (0, -signal.SIGTERM))
        # reaped by the server itself, so not even a zombie is left the moment it has exited
        print('workers left:', [p for p in pids if psutil.pid_exists(p) or p in srv.left_behind])
        print('stop_extension finished cleanly:', 'stop_extension did not finish cleanly' not in srv.log())
        """
    ),
    md("## SIGKILL: no shutdown at all"),
    code(
        """
        srv = Server(tmp / 'kill').start()
        pids = srv.create_push_sessions(2)
        srv.proc.kill()
        srv.proc.wait()
        t0 = time.monotonic()
        left = gone(pids, timeout=3.0)
        print(f'workers gone {time.monotonic() - t0:.2f} s after the SIGKILL')
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        print('server killed:', srv.proc.returncode == -signal.SIGKILL)
        print('workers left 3 s after SIGKILL:', left)
        """
    ),
    md("Clean up and check that the counters are back to baseline (threads, child processes, fds, sockets)."),
    code(
        """
        for server in SERVERS:
            server.close()
        """
    ),
    BACK_TO_BASELINE,
]


# -- 05: push audio ----------------------------------------------------------------------------
NB05 = [
    md(
        """
        # Push audio from NumPy

        A session with `lx.PushSource()` captions audio you feed it yourself (16 kHz mono, int16
        or float32 arrays). Here the first 12 seconds of the bundled sample are fed from NumPy in
        100 ms chunks at the speed of speech, like a microphone would deliver them, while
        `lx.CaptionView` shows the live partial and the finals; `s.stop()` finalizes what was
        fed. Embedded mode: `lx.connect(None)` makes the session run in this kernel, even when a
        Jupyter server with the extension started it. Ends by checking that the process counters
        are back to baseline. `make test` runs it with nbval and in JupyterLab.
        """
    ),
    code(
        """
        import re, shutil, tempfile, time, wave
        from pathlib import Path

        import jiwer
        import numpy as np
        import loquilex_nb as lx
        from loquilex_nb.testing.baseline import Baseline

        lx.connect(None)  # embedded mode: this kernel's own supervisor runs the session
        baseline = Baseline()
        tmp = Path(tempfile.mkdtemp(prefix='lx-nb05-'))
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        RATE, SECONDS = 16000, 12.0  # the first three sentences of the sample
        sample = Path(lx.__file__).parent / 'data' / 'sample.wav'
        with wave.open(str(sample)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype='<i2')
        audio = pcm[: int(SECONDS * RATE)].astype(np.float32) / 32768.0  # float32 in [-1, 1)
        print(f'{len(audio) / RATE:.1f} s of audio, {audio.dtype}')
        """
    ),
    md("Start the session and show the live caption view: status, the live partial, the finals with their latency."),
    code(
        """
        s = lx.session(lx.PushSource(), output_root=tmp, out='push').start()
        view = lx.CaptionView(s)
        display(view)
        """
    ),
    md("Feed 100 ms chunks at real time, then stop: the view follows along."),
    code(
        """
        CHUNK = RATE // 10
        start = time.monotonic()
        for i in range(0, len(audio), CHUNK):
            s.feed(audio[i:i + CHUNK])
            ahead = start + (i + CHUNK) / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # the speed of speech
        print(s.stop())
        """
    ),
    code(
        """
        events = list(s.events())  # everything the session said, in order, up to eos
        partials = [ev for ev in events if ev.type == 'asr.partial']
        finals = [ev for ev in events if ev.type == 'asr.final']
        for ev in finals:
            print(f'[{ev.t0:5.2f}] {ev.text}')
        """
    ),
    code(
        """
        # NBVAL_CHECK_OUTPUT
        norm = lambda t: ' '.join(re.sub(r"[^a-z0-9' ]", ' ', t.lower()).split())
        reference = ' '.join(sample.with_suffix('.txt').read_text().splitlines()[:3])
        print('partials seen:', len(partials) > 0)
        print('finals seen:', len(finals) > 0)
        print('close to the script (WER < 0.25):', jiwer.wer(norm(reference), norm(s.text)) < 0.25)
        print('ended:', s.end.kind, '| last event:', events[-1].type)
        print(sorted(p.name for p in s.outputs.values()))
        """
    ),
    md(
        """
        Clean up and check that the counters are back to baseline (threads, child processes, fds,
        sockets). `view.close()` stops the view's updater thread; the captions it shows stay.
        """
    ),
    code(
        """
        view.close()
        s.close();  # also joins this kernel's loquilex loop thread
        """
    ),
    BACK_TO_BASELINE,
]

NOTEBOOKS = {
    "01-quickstart": NB01,
    "02-resource-monitor": NB02,
    "03-kernel-restart-cleanup": NB03,
    "04-server-shutdown-cleanup": NB04,
    "05-push-audio": NB05,
}


def build(name: str, cells: list[str]) -> nbformat.NotebookNode:
    nb = new_notebook(metadata=METADATA)
    for i, cell in enumerate(cells):
        kind, _, source = cell.partition(":")
        # stable ids keep regenerated notebooks diffable
        cid = hashlib.sha1(f"{name}/{i}".encode()).hexdigest()[:8]
        nb.cells.append(new_markdown_cell(source, id=cid) if kind == "md" else new_code_cell(source, id=cid))
    return nb


def execute(nb: nbformat.NotebookNode) -> None:
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="*", help="notebook names or number prefixes (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without outputs")
    args = parser.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.which or any(n.startswith(w) or n == w for w in args.which)]
    if not names:
        parser.error(f"no notebook matches {args.which}; choose from {list(NOTEBOOKS)}")
    for name in names:
        nb = build(name, NOTEBOOKS[name])
        t0 = time.monotonic()
        if not args.no_execute:
            execute(nb)
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"wrote {path.relative_to(HERE.parent)}" + ("" if args.no_execute else f" (executed in {time.monotonic() - t0:.1f} s)"))


if __name__ == "__main__":
    main()
