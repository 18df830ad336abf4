"""Code that runs only inside a session's worker process (`python -m loquilex_nb.worker`).

The process: main (set-up, threads, exit), signals (SIGTERM/SIGUSR1/parent death and the exit
deadline), control (the control pipe), backlog (audio and messages waiting), feeders (file and
microphone), loop (the main loop), eventout (the event pipe). The recognition: streaming,
decoder, vad, agreement, revisions; captions writes the files. Imports only `core`.
"""
