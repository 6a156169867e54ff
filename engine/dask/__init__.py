"""Batch inference on a Dask cluster (the ``dask`` extra: ``pip install convengine[dask]``).

``predict(model_path, array)`` maps a dask array of NCHW float32 images through a model, one
batch per task; ``predict_folder(model_path, folder, output=...)`` does the same for a folder
of .npy, PNG or JPEG files and writes the predictions to one .npy (or Zarr) file.

How the work is laid out:

- Tasks carry the model's path, never the model: each worker process loads the file on its
  first batch and keeps it in a cache keyed by the path and the file's identity (device,
  inode, size, modification time), so a file replaced in place is loaded anew. The path must
  name the same model on the client (which reads it once to check the input and learn the
  output's shape) and on every worker: a shared file system, or the same copy on each machine.
- A batch runs on as many kernel threads as its Dask worker has threads (the worker's share
  of the cores; ``threads_per_worker`` may lower it), and a batch on more than one thread
  holds a lock of its process: a worker started with ``--nthreads 4`` runs one batch on 4
  kernel threads at a time, not 4 batches on 4 threads each. Outside a distributed worker
  (Dask's local schedulers) a batch runs on ``threads_per_worker`` threads, 1 by default, and
  the scheduler's pool supplies the parallelism.
- The rows equal those of ``model.run`` on the same batches: kernels do not depend on the
  thread count. The batch size may change an algorithm choice (a Gemm of 8 rows or fewer takes
  another path than one of 64), so a run of the whole array at once can differ in the last
  bits.
- Dask itself retries the tasks of a worker that dies (up to the scheduler's
  ``allowed-failures``); a bad image is reported by name, skipped or failing the job.

Dask is imported on first use: ``import engine`` and ``import engine.dask`` do not need it.
"""
from __future__ import annotations

import os
import threading
from contextlib import nullcontext

import numpy as np

from .._threads import fork_safe
from ..io import load as _load

DEFAULT_BATCH_SIZE = 32
NPY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Dask's names for its single-machine schedulers; any other string is a scheduler address
LOCAL_SCHEDULERS = ("threads", "sync", "synchronous", "single-threaded", "processes")

_EXTRA_HINT = ("install the 'dask' extra: pip install convengine[dask] (it brings dask[array] "
               "and distributed)")


def _import_dask():
    try:
        import dask
        import dask.array  # noqa: F401
    except ImportError as e:
        raise ImportError(f"engine.dask needs Dask: {_EXTRA_HINT}; {e}") from None
    return dask


def _import_distributed():
    try:
        import distributed
    except ImportError as e:
        raise ImportError(f"running on a Dask cluster needs distributed: {_EXTRA_HINT}; "
                          f"{e}") from None
    return distributed


# --------------------------------------------------------------------------- per process


class _ProcessState:
    """The models this process has loaded, and the lock that lets one multi-threaded batch
    run at a time. Locks are made anew in a forked child (fork_safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.batch_lock = threading.Lock()
        self._models = {}          # absolute path -> (file identity, Model)
        self.loads = 0
        self.batches = 0
        fork_safe(self)

    def model(self, path):
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            entry = self._models.get(path)
            if entry is None or entry[0] != identity:
                # a replaced file's old model is dropped with its entry
                entry = self._models[path] = (identity, _load(path))
                self.loads += 1
            return entry[1]

    def count_batch(self):
        with self._lock:
            self.batches += 1


_state = _ProcessState()


def process_stats() -> dict:
    """{"loads": model files loaded, "batches": batches run} in this process; on a cluster,
    ``client.run(engine.dask.process_stats)`` gives them per worker."""
    return {"loads": _state.loads, "batches": _state.batches}


def _worker_threads():
    """The thread count of the Dask worker running this task, or None outside one."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return int(getattr(worker, "state", worker).nthreads)


def _batch_threads(threads_per_worker=None) -> int:
    """Kernel threads for one batch: the worker's threads, at most threads_per_worker when
    given; outside a distributed worker threads_per_worker, else 1."""
    worker = _worker_threads()
    if worker is None:
        return threads_per_worker or 1
    return min(worker, threads_per_worker) if threads_per_worker else worker


def _run_rows(model, input_name, x, threads, wanted):
    """{output name: array} of the outputs ``wanted`` for the images x (N, C, H, W), each with
    N rows. A model whose batch dimension is fixed runs in pieces of that size, the last
    padded with zeros."""
    shape = next(s.shape for s in model.inputs if s.name == input_name)
    fixed = shape[0] if shape else None
    n = len(x)
    lock = _state.batch_lock if threads > 1 else nullcontext()
    with lock:
        if fixed is None or fixed == n:
            outs = model.run({input_name: x}, num_threads=threads)
        else:
            pieces = []
            for start in range(0, n, fixed):
                part = x[start:start + fixed]
                rows = len(part)
                if rows < fixed:
                    pad = np.zeros((fixed - rows,) + x.shape[1:], x.dtype)
                    part = np.concatenate([part, pad])
                out = model.run({input_name: part}, num_threads=threads)
                pieces.append({k: v[:rows] for k, v in out.items()})
            outs = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    outs = {name: outs[name] for name in wanted}
    for name, value in outs.items():
        if value.ndim == 0 or value.shape[0] != n:
            raise ValueError(f"output {name!r} has shape {value.shape} for a batch of {n} "
                             f"images: its first dimension is not the batch, so its rows "
                             f"cannot be matched to images")
    return outs


def _predict_block(block, path, input_name, output, tail, dtype, threads_per_worker):
    """One batch of predict(): the task carries the model's path, not the model."""
    if len(block) == 0:
        return np.empty((0,) + tuple(tail), dtype)
    model = _state.model(path)
    _state.count_batch()
    return _run_rows(model, input_name, np.ascontiguousarray(block),
                     _batch_threads(threads_per_worker), [output])[output]


def _predict_block_outputs(block, path, input_name, outputs, threads_per_worker):
    model = _state.model(path)
    _state.count_batch()
    return _run_rows(model, input_name, np.ascontiguousarray(block),
                     _batch_threads(threads_per_worker), outputs)


# --------------------------------------------------------------------------- on the client


def _positive(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _model_path(model_path) -> str:
    try:
        path = os.fspath(model_path)
    except TypeError:
        raise ValueError(f"model_path must be a file path, got {type(model_path).__name__} "
                         f"(tasks carry the path and each worker loads the file once)") from None
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    return path


def _input_name(model, input_name):
    names = [s.name for s in model.inputs]
    if len(names) != 1:
        raise ValueError(f"the model has inputs {names}: batches of images feed a "
                         f"single-input model")
    if input_name is not None and input_name != names[0]:
        raise ValueError(f"input_name {input_name!r} is not the model's input {names[0]!r}")
    return names[0]


def _output_names(model, output):
    names = [s.name for s in model.outputs]
    if output is None:
        return names
    wanted = [output] if isinstance(output, str) else list(output)
    unknown = [w for w in wanted if w not in names]
    if unknown or not wanted:
        raise ValueError(f"output {unknown[0] if unknown else output!r} is not an output of "
                         f"the model: {names}")
    return wanted


def _probe(model, input_name, image_shape, wanted):
    """{output name: (shape after the batch dimension, dtype)} from one zero image: checks the
    image shape against the model before any task runs."""
    x = np.zeros((1,) + tuple(int(d) for d in image_shape), np.float32)
    try:
        outs = _run_rows(model, input_name, x, 1, wanted)
    except ValueError as e:
        raise ValueError(f"the model cannot run on images of shape {tuple(image_shape)}: "
                         f"{e}") from None
    return {k: (v.shape[1:], v.dtype) for k, v in outs.items()}


def predict(model_path, array, *, batch_size=DEFAULT_BATCH_SIZE, threads_per_worker=None,
            output=None, input_name=None):
    """The model's predictions for the NCHW float32 images of a dask array, as a lazy dask
    array with one row per image (compute it, store it, or pass it on).

    array: a dask array (or anything ``dask.array.asarray`` takes) of shape (N, C, H, W),
    float32; it is rechunked to ``batch_size`` images per chunk, each chunk one task that runs
    the model once (``map_blocks``). The tasks carry ``model_path``, never the model: each
    worker process loads the file once.
    threads_per_worker: kernel threads per batch outside a distributed worker (default 1);
    on a worker, the worker's thread count, lowered to this when given.
    output: the output to return, for a model with several. ``output=None`` on a model with
    one output returns its array; on a model with several, or with a list of names, a dict
    {name: dask array} whose arrays share one model run per batch when computed together
    (``dask.compute(*result.values())``); computed one at a time, each runs the model again.
    input_name: the model's input, checked (the model must have exactly one).

    The client loads the model once too, to check the input and to learn each output's shape
    from one zero image.
    """
    dask = _import_dask()
    import dask.array as da
    path = _model_path(model_path)
    batch_size = _positive(batch_size, "batch_size")
    threads_per_worker = _positive(threads_per_worker, "threads_per_worker", allow_none=True)
    if not isinstance(array, da.Array):
        array = da.asarray(array)
    if array.ndim != 4:
        raise ValueError(f"array must hold NCHW images (4 dimensions), got shape "
                         f"{array.shape}")
    if array.dtype != np.float32:
        raise ValueError(f"array must be float32, got {array.dtype} (array.astype('float32'))")
    if any(np.isnan(d) for d in array.shape):
        raise ValueError(f"array has unknown chunk sizes (shape {array.shape}): call "
                         f"array.compute_chunk_sizes() first")
    model = _state.model(path)
    name = _input_name(model, input_name)
    outputs = _output_names(model, output)
    shapes = _probe(model, name, array.shape[1:], outputs)
    array = array.rechunk({0: batch_size, 1: -1, 2: -1, 3: -1})
    token = dask.base.tokenize(path, os.stat(path).st_mtime_ns, array.name, threads_per_worker)

    if isinstance(output, str) or (output is None and len(outputs) == 1):
        out = outputs[0]
        tail, dtype = shapes[out]
        ndim = 1 + len(tail)
        axes = {}
        if ndim < 4:
            axes["drop_axis"] = list(range(ndim, 4))
        elif ndim > 4:
            axes["new_axis"] = list(range(4, ndim))
        return array.map_blocks(
            _predict_block, path, name, out, tuple(tail), dtype.str, threads_per_worker,
            chunks=(array.chunks[0],) + tuple((d,) for d in tail), dtype=dtype,
            meta=np.empty((0,) * ndim, dtype), name=f"convengine-predict-{out}-{token}",
            **axes)

    # several outputs: one task per batch returns them all, each array takes its part
    runs = [dask.delayed(_predict_block_outputs, pure=True)(
                block, path, name, tuple(outputs), threads_per_worker,
                dask_key_name=f"convengine-predict-{token}-{i}")
            for i, block in enumerate(array.to_delayed().ravel())]
    result = {}
    for out in outputs:
        tail, dtype = shapes[out]
        parts = [da.from_delayed(run[out], shape=(rows,) + tuple(tail), dtype=dtype,
                                 meta=np.empty((0,) * (1 + len(tail)), dtype))
                 for run, rows in zip(runs, array.chunks[0])]
        result[out] = da.concatenate(parts) if parts else da.empty((0,) + tuple(tail), dtype)
    return result


# the folder runner (engine/dask/folder.py) is part of this module's interface
from .folder import FolderResult, predict_folder, read_image, run_folder_command  # noqa: E402,F401
