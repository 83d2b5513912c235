"""``ssaref.atomic.deferred_signals``: signals held over a write are delivered after it, none lost."""

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_BOTH = """
import os, signal
from ssaref import atomic
try:
    with atomic.deferred_signals():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        print("inside", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
print("still alive", flush=True)
"""


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # Python's KeyboardInterrupt handler even under nohup


def test_a_sigterm_behind_a_sigint_is_not_lost():
    """Both arrive inside the block: both are delivered after it; SIGTERM's default action ends the process (a
    SIGINT delivered first would raise KeyboardInterrupt before SIGTERM's turn and leave it undelivered)."""
    r = subprocess.run([sys.executable, "-c", _BOTH], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       preexec_fn=_sigint_default)
    assert r.returncode == -signal.SIGTERM, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "inside\n", r.stdout


def test_a_lone_sigint_is_delivered_after_the_block():
    code = _BOTH.replace("        os.kill(os.getpid(), signal.SIGTERM)\n", "")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       preexec_fn=_sigint_default)
    assert r.returncode == 0 and r.stdout == "inside\nKeyboardInterrupt\nstill alive\n", (r.returncode, r.stdout)
