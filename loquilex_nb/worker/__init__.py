"""Code that runs only inside a session's worker process (`python -m loquilex_nb.worker`).

Streaming recognition, the decoder, voice activity, revisions and caption writers; imports only `core`.
"""
