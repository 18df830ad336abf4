"""The vocabulary every process shares: events, configuration, sources, audio, paths, counters.

Imports nothing else of loquilex_nb, so the worker, the supervisor, the server extension and the
kernel side all speak the same words.
"""
