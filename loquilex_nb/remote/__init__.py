"""Server mode on the kernel side: a session run by the Jupyter server extension, over REST + WebSocket."""
