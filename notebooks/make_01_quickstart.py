import nbformat as nbf
nb = nbf.v4.new_notebook()
cells = [
("md", "# Quickstart: caption the bundled sample\n\nRuns a captioning session in this kernel (embedded mode), prints the finals, reads the caption files, and checks that nothing is left behind. `make test` executes this notebook with nbval."),
("code", "from pathlib import Path\nimport loquilex_nb as lx\nfrom loquilex_nb.resources import process_counters\n\nbaseline = process_counters()\nsample = Path(lx.__file__).parent / 'data' / 'sample.wav'"),
("code", "# inside JupyterLab with the extension this runs in the server; in a bare kernel, here\nwith lx.session(str(sample), realtime=False, out='quickstart-sample') as s:\n    for ev in s.events():\n        if ev.type == 'asr.final':\n            print(f'[{ev.t0:5.2f}] {ev.text}')"),
("code", "# NBVAL_CHECK_OUTPUT\nimport jiwer, re\nnorm = lambda t: ' '.join(re.sub(r\"[^a-z0-9' ]\", ' ', t.lower()).split())\nreference = sample.with_suffix('.txt').read_text()\nprint(s.end.kind, len(s.finals), jiwer.wer(norm(reference), norm(s.text)) < 0.15)"),
("code", "# NBVAL_CHECK_OUTPUT\nprint(sorted(p.name for p in s.outputs.values()))\nprint(s.outputs['vtt'].read_text().splitlines()[0])"),
("code", "import webvtt\nfor cue in webvtt.read(str(s.outputs['vtt']))[:3]:\n    print(cue.start, cue.end, cue.text)"),
("md", "Clean up and check that the counters are back to baseline (threads, child processes, fds, sockets)."),
("code", "# NBVAL_CHECK_OUTPUT\nimport shutil, time\nshutil.rmtree(s.outputs['vtt'].parent)\ndeadline = time.monotonic() + 5\nwhile True:\n    now = process_counters()\n    ok = (now.threads <= baseline.threads and now.children == baseline.children\n          and now.fds <= baseline.fds and now.sockets <= baseline.sockets)\n    if ok or time.monotonic() > deadline:\n        break\n    time.sleep(0.1)\nassert ok, (baseline, now)\nprint('back to baseline')"),
]
for kind, src in cells:
    nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
import nbclient, os
os.chdir("notebooks")
nbclient.NotebookClient(nb, timeout=180, kernel_name="python3").execute()
for c in nb.cells:
    if c.cell_type == "code":
        for o in c.outputs:
            print(o.get("text", o.get("ename", o.get("output_type"))))
nbf.write(nb, "01-quickstart.ipynb")
