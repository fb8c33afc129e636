"""Ctrl-C at a safe point: the loop finishes the event it is in, writes a
checkpoint and stops (`Interrupted`); a second Ctrl-C interrupts at once."""
from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(Exception):
  """The run was stopped by SIGINT at a safe point (one-line message)."""


class _Flag:
  set = False


@contextlib.contextmanager
def deferred_sigint():
  """Yields a flag that SIGINT sets instead of raising KeyboardInterrupt;
  the first SIGINT restores the previous handler. Outside the main thread
  (where handlers cannot be installed) the flag is never set."""
  flag = _Flag()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.getsignal(signal.SIGINT)

  def handler(signum, frame):
    del signum, frame
    flag.set = True
    signal.signal(signal.SIGINT, previous)

  signal.signal(signal.SIGINT, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGINT, previous)
