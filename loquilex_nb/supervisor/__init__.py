"""One asyncio loop that owns the worker processes: sessions, the supervisor, the private runtime thread.

Imports only `core`.
"""
