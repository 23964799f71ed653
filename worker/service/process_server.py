"""Imported by the worker's process server (multiprocessing's forkserver, see supervisor.py) before
anything else, and nowhere else: it makes the server ignore SIGTERM.

A SIGTERM to the whole process group (systemd, `kill -TERM -PGID`) asks the worker to checkpoint the
job and hand it back. The training child ignores it and finishes its step; the server it was forked
from must ignore it too, or the child would die with it (PR_SET_PDEATHSIG) before saving. The server
still exits when the worker does: multiprocessing ends it when the worker's end of its pipe closes.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
