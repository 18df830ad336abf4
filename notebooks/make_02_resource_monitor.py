import nbformat as nbf, nbclient
nb = nbf.v4.new_notebook()
cells = [
("md", "# Resource monitor: watch the counters return\n\nA live `ResourceMonitor` for this kernel (and, inside JupyterLab with the extension, for the server and each session's worker). Start two sessions, watch the child processes, fds and threads grow, stop them and watch everything come back."),
("code", "import shutil, time\nimport loquilex_nb as lx\nfrom loquilex_nb.resources import process_counters\nfrom loquilex_nb import widgets  # one-time import costs are not leaks\n\nbaseline = process_counters()\nmon = lx.ResourceMonitor(interval=0.5, server='auto')\nmon"),
("code", "# NBVAL_CHECK_OUTPUT\nsessions = [lx.session(lx.PushSource(), out=f'monitor-demo-{i}').start() for i in range(2)]\ndeadline = time.monotonic() + 60\nwhile any(s.status == 'starting' for s in sessions) and time.monotonic() < deadline:\n    time.sleep(0.1)\ntime.sleep(1.5)  # a few samples with the sessions running\nmon.refresh()\nprint('sessions running:', sum(s.status == 'running' for s in sessions))"),
("code", "# NBVAL_CHECK_OUTPUT\nfolders = [s.outputs['vtt'].parent for s in sessions]\nfor s in sessions:\n    s.close()\ntime.sleep(1.5)  # a few samples after the stop\nmon.refresh()\nprint('sessions running:', sum(s.status == 'running' for s in sessions))\nprint('ended:', sorted({s.end.kind for s in sessions}))"),
("md", "Clean up and check that this kernel's counters are back to their baseline."),
("code", "# NBVAL_CHECK_OUTPUT\nmon.close()\nfor folder in folders:\n    shutil.rmtree(folder, ignore_errors=True)\n# ipykernel collects the message pipe of a finished background thread every 10 s\ndeadline = time.monotonic() + 15\nwhile True:\n    now = process_counters()\n    ok = (now.threads <= baseline.threads and now.children == baseline.children\n          and now.fds <= baseline.fds and now.sockets <= baseline.sockets)\n    if ok or time.monotonic() > deadline:\n        break\n    time.sleep(0.1)\nassert ok, (baseline, now)\nprint('back to baseline')"),
]
for kind, src in cells:
    nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
import os
os.chdir("notebooks")
nbclient.NotebookClient(nb, timeout=180, kernel_name="python3").execute()
for c in nb.cells:
    if c.cell_type == "code":
        for o in c.outputs:
            print(o.get("text", o.get("ename", o.get("output_type"))))
nbf.write(nb, "02-resource-monitor.ipynb")
