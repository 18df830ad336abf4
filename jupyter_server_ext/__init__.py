"""Jupyter server extension `loquilex`: captioning sessions over REST and WebSocket."""


def _jupyter_server_extension_points():
    from .app import LoquilexApp

    return [{"module": "jupyter_server_ext", "app": LoquilexApp}]
