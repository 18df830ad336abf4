"""`python -m loquilex_nb.worker`: one captioning session, driven by its supervisor over stdin/stdout."""

from .main import run

run()
