"""Configuration declared by the object that uses it, set by users on the app.

Each class here is declared next to its user (the hub's `Limits`, the `SessionManager`, the browser
leases, the activity reporter). `LoquilexApp` inherits them all, so every knob keeps its one
documented name, `LoquilexApp.<name>`, and `--help-all` lists it there; the objects get the
configured values with `of(app)` when the app builds them.
"""

from __future__ import annotations

from typing import Any

from traitlets import HasTraits


class Knobs(HasTraits):
    @classmethod
    def of(cls, configured: HasTraits) -> dict[str, Any]:
        """This class's traits as `configured` (the app) holds them: keyword arguments for cls."""
        return {name: getattr(configured, name) for name in cls.class_trait_names()}
