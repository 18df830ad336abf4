"""Notebook widgets (ipywidgets, no custom JS): a live resource monitor and a live caption view.

Each runs at most one updater thread of its own, owned and joined by `close()` and stopped
at interpreter exit too (`updater.py` says how); `monitor.py` and `caption_view.py` hold
the widgets, `html.py` what they draw with.
"""

from __future__ import annotations

from .caption_view import CaptionView
from .html import sparkline
from .monitor import ResourceMonitor
from .updater import close_all

__all__ = ["CaptionView", "ResourceMonitor", "close_all", "sparkline"]
