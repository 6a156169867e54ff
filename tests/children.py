"""Running Python in a child process the way a user of the installed package would.

The child gets this process's sys.path (so it imports the same engine: the installed package
in CI, the source tree with built kernels in development) and runs in a directory of the
caller's choosing, away from the repository root, whose source tree (no built kernels) would
otherwise shadow the installed package.
"""
import os
import subprocess
import sys


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def run_python(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` (e.g. ["-c", code] or ["-m", "engine.cli", ...])."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=child_env(), timeout=timeout)
