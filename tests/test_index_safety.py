"""Index safety: every convolution algorithm (engine.conv1d / conv2d with algorithm=each of
engine.algorithms()), conv_transpose2d, max_pool2d, avg_pool2d, conv3d and deform_conv2d on
dilations from 1 to several times the input, paddings from 0 to the dilation, strides 1-3, and
rows long enough that im2col cuts them into pieces (the cases themselves, and why they were
chosen, are in tests/index_sweep_child.py).

Tolerance, as tests/test_conv2d.py: float32 accumulation error is bounded by a multiple of eps32
times the magnitude of the summed terms, the same op on |x| and |w|, so
    |y - ref| <= RTOL[algorithm] * conv(|x|, |w|) + 1e-6
against a float64 reference (tests/reference.py, or the one in the op's own test file; conv1d
as conv2d with height 1). RTOL is test_conv2d.py's; col2im, conv3d and deform_conv2d sum like
im2col (1e-5), zero_insert like the convolution it runs, avg_pool2d gets 1e-5 of the mean of
|x|, and max pooling (values and indices) is exact. Every case runs at 1 and 2 threads, and the
two results must be bit-identical.

Crash isolation: an index out of range can corrupt the heap and kill the process, often only
after it has returned wrong values, so the cases run in child processes (a fresh interpreter,
not a fork of pytest), one per batch: an algorithm or an op. The child prints each case's call
before running it and its result after (protocol in index_sweep_child.py); a child that dies
fails the batch naming the case it was running. The child runs with glibc's heap checks
tightened (see _child_env) and MALLOC_PERTURB_, so that outputs a kernel never wrote show as
garbage.
"""
import ctypes.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from index_sweep_child import BATCHES, MIN_RAN

TESTS = Path(__file__).resolve().parent
CHILD = TESTS / "index_sweep_child.py"
TIMEOUT_S = 300


def _child_env():
    env = dict(os.environ)
    repo = str(Path(engine.__file__).resolve().parent.parent)   # the engine this process tests
    env["PYTHONPATH"] = os.pathsep.join(
        [repo, str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # glibc: fill fresh and freed blocks with a byte pattern; serve even large blocks from the
    # heap, not mmap, so that a block's neighbours are other blocks whose headers free()
    # checks (and they are reused, not faulted in afresh at every call)
    env.update(MALLOC_PERTURB_="165", MALLOC_MMAP_THRESHOLD_=str(1 << 30),
               MALLOC_TRIM_THRESHOLD_=str(1 << 30))
    # glibc >= 2.34: MALLOC_CHECK_ (a guard byte after each block) needs its debug library;
    # not added to a preload already there (a sanitizer's runtime: bench/run_asan.sh)
    debug = ctypes.util.find_library("c_malloc_debug")
    if debug and not env.get("LD_PRELOAD"):
        env.update(LD_PRELOAD=debug, MALLOC_CHECK_="3")
    return env


def _stderr_excerpt(stderr, limit=3000):
    """A sanitizer's report from its start (its tail is a legend), else the end of stderr."""
    start = stderr.find("ERROR: AddressSanitizer")
    return stderr[start:start + limit] if start >= 0 else stderr[-limit:]


def _status(returncode):
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@pytest.mark.parametrize("batch", list(BATCHES))
def test_index_safety(batch):
    try:
        proc = subprocess.run([sys.executable, str(CHILD), batch], env=_child_env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        stdout, stderr, status = proc.stdout, proc.stderr, _status(proc.returncode)
        died = proc.returncode != 0
    except subprocess.TimeoutExpired as e:
        as_text = (lambda b: b.decode(errors="replace") if isinstance(b, bytes) else b or "")
        stdout, stderr = as_text(e.stdout), as_text(e.stderr)
        status, died = f"timed out after {TIMEOUT_S} s", True

    calls, failures, running, done = {}, [], None, None
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        i, _, text = rest.partition("\t")
        if word == "CASE":
            calls[i] = running = last = text
        elif word in ("PASS", "SKIP", "FAIL"):
            running = None
            if word == "FAIL":
                failures.append(f"{calls[i]}\n    {text}")
        elif word == "DONE":
            done = tuple(map(int, rest.split()))
    if died:
        where = (f"while running\n  {running}" if running is not None else
                 f"after the case\n  {last}" if calls else "before the first case")
        failures.insert(0, f"child {status} {where}\n  stderr: {_stderr_excerpt(stderr)}")
    elif done is None:
        failures.insert(0, f"child exited without finishing\n  stderr: {_stderr_excerpt(stderr)}")
    assert not failures, (f"{batch}: {len(failures)} failure(s):\n"
                          + "\n".join(f"- {f}" for f in failures))
    ran, skipped = done
    print(f"{batch}: ran {ran} cases, skipped {skipped} (the algorithm refused the layer)")
    assert ran >= MIN_RAN, f"only {ran} cases ran in {batch} ({skipped} skipped)"
