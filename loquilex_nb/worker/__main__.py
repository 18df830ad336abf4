"""`python -m loquilex_nb.worker`: one captioning session, driven by its supervisor over stdin/stdout."""

import os
import sys

from .main import main

status = main()
# every thread is joined and every file closed by now: skip the interpreter's teardown
# (unloading the ASR stack can take seconds on a loaded machine, and the stop grace counts)
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
