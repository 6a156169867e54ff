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

import importlib.util
import os
import threading
import uuid
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from ._threads import fork_safe
from .io import load as _load

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


# --------------------------------------------------------------------------- folders


@dataclass
class FolderResult:
    """What predict_folder wrote: ``files`` names the images of the output's rows, in order."""
    output: str
    shape: tuple
    files: list = field(default_factory=list)
    skipped: list = field(default_factory=list)    # (file name, reason)
    ignored: list = field(default_factory=list)    # files that are not .npy, PNG or JPEG


def read_image(path, preprocess=None):
    """One image as a (C, H, W) float32 array: a .npy file's values as they are (a 3-D array
    of numbers, cast to float32); a PNG or JPEG through Pillow, 8-bit samples divided by 255,
    HWC made CHW (grayscale L gives 1 channel, RGB 3, RGBA 4, other modes become RGB).
    ``preprocess``, when given, maps that array to the model's input, still (C, H, W)."""
    if path.lower().endswith(NPY_SUFFIXES):
        a = np.load(path, allow_pickle=False)
        if a.ndim != 3 or a.dtype.kind not in "fiu":
            raise ValueError(f"expected a C x H x W array of numbers, got shape {a.shape}, "
                             f"dtype {a.dtype}")
        a = a.astype(np.float32)
    else:
        from PIL import Image
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            a = np.asarray(im)
        if a.ndim == 2:
            a = a[:, :, None]
        a = a.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    if preprocess is not None:
        a = preprocess(a)
        if not isinstance(a, np.ndarray) or a.ndim != 3 or a.dtype != np.float32:
            raise ValueError(f"preprocess must return a (C, H, W) float32 array, got "
                             f"{getattr(a, 'shape', type(a).__name__)} "
                             f"{getattr(a, 'dtype', '')}")
    return np.ascontiguousarray(a)


def _read_or_reason(path, preprocess, shape=None):
    """(image, None) or (None, why it cannot be used)."""
    try:
        a = read_image(path, preprocess)
    except Exception as e:   # decoders raise many types (OSError, SyntaxError, EOFError, ...)
        return None, f"{type(e).__name__}: {e}"
    if shape is not None and a.shape != shape:
        return None, f"shape {a.shape}, the folder's first image has {shape}"
    return a, None


def _folder_batch(paths, shape, model_path, input_name, output, tail, dtype,
                  threads_per_worker, skip, preprocess):
    """One batch of predict_folder: (rows for the readable images, [(name, reason)] skipped)."""
    images, bad = [], []
    for p in paths:
        a, reason = _read_or_reason(p, preprocess, shape)
        if a is None:
            if not skip:
                raise ValueError(f"bad image {os.path.basename(p)!r}: {reason}")
            bad.append((os.path.basename(p), reason))
        else:
            images.append(a)
    if not images:
        return np.empty((0,) + tuple(tail), dtype), bad
    model = _state.model(model_path)
    _state.count_batch()
    rows = _run_rows(model, input_name, np.stack(images), _batch_threads(threads_per_worker),
                     [output])
    return rows[output], bad


class _NpyWriter:
    """Rows appended in order to a .npy file, made as large as every file could fill and cut
    to the rows written at the end (written beside the target, moved over it when complete)."""

    def __init__(self, path, capacity, tail, dtype):
        self.path, self.rows = path, 0
        self.partial = path + ".partial"
        self.array = np.lib.format.open_memmap(self.partial, "w+", dtype,
                                               (capacity,) + tuple(tail))

    def write(self, rows):
        self.array[self.rows:self.rows + len(rows)] = rows
        self.rows += len(rows)

    def close(self):
        if self.rows < len(self.array):
            final = np.lib.format.open_memmap(self.path + ".final", "w+", self.array.dtype,
                                              (self.rows,) + self.array.shape[1:])
            final[:] = self.array[:self.rows]
            final.flush()
            del final
            os.replace(self.path + ".final", self.partial)
        else:
            self.array.flush()
        del self.array
        os.replace(self.partial, self.path)

    def abort(self):
        self.array = None
        for p in (self.partial, self.path + ".final"):
            if os.path.exists(p):
                os.remove(p)


class _ZarrWriter:
    """Rows appended in order to a Zarr array, resized to the rows written at the end."""

    def __init__(self, path, capacity, tail, dtype, chunk_rows):
        import zarr
        self.path, self.rows = path, 0
        self.array = zarr.open_array(store=path, mode="w", shape=(capacity,) + tuple(tail),
                                     chunks=(chunk_rows,) + tuple(tail), dtype=dtype)

    def write(self, rows):
        if len(rows):
            self.array[self.rows:self.rows + len(rows)] = rows
        self.rows += len(rows)

    def close(self):
        self.array.resize((self.rows,) + tuple(self.array.shape[1:]))

    def abort(self):
        pass


def _list_folder(folder):
    if not os.path.isdir(folder):
        raise ValueError(f"folder {folder!r} is not a directory")
    images, ignored = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        (images if name.lower().endswith(NPY_SUFFIXES + IMAGE_SUFFIXES)
         else ignored).append(name)
    return images, ignored


def _open_client(scheduler, n_workers, threads_per_worker):
    """(client, things to close): a given Client, one for an address, or a LocalCluster."""
    distributed = _import_distributed()
    if scheduler is not None and not isinstance(scheduler, str):
        if not hasattr(scheduler, "submit"):
            raise ValueError(f"scheduler must be an address, a local scheduler's name "
                             f"{LOCAL_SCHEDULERS} or a distributed.Client, got "
                             f"{type(scheduler).__name__}")
        return scheduler, []
    if scheduler is None:
        # dashboard on a free port: two jobs on one machine must not compete for 8787
        cluster = distributed.LocalCluster(n_workers=n_workers,
                                           threads_per_worker=threads_per_worker,
                                           processes=True, dashboard_address=":0")
        client = distributed.Client(cluster)
        return client, [client, cluster]
    client = distributed.Client(scheduler)
    return client, [client]


def _results_distributed(client, batches, args, progress):
    """The batches' results in order (a generator), each released once consumed. The job's
    first error, in batch order, is raised before any result is given."""
    distributed = _import_distributed()
    run_id = uuid.uuid4().hex[:12]
    futures = [client.submit(_folder_batch, batch, *args, key=f"convengine-batch-{run_id}-{i}",
                             pure=False) for i, batch in enumerate(batches)]
    try:
        if progress:
            distributed.progress(futures, notebook=False)
        for f in distributed.as_completed(futures):
            if f.status == "error":
                f.result()          # raises the task's exception, e.g. a bad image's name
    except BaseException:
        client.cancel(futures)
        raise
    for k, f in enumerate(futures):
        result = f.result()
        futures[k] = None           # the worker may drop it
        yield result


def _results_local(scheduler, batches, args, progress):
    dask = _import_dask()
    from dask.diagnostics import ProgressBar
    tasks = [dask.delayed(_folder_batch, pure=False)(batch, *args) for batch in batches]
    with ProgressBar() if progress else nullcontext():
        return dask.compute(*tasks, scheduler=scheduler)


def predict_folder(model_path, folder, *, output, batch_size=DEFAULT_BATCH_SIZE,
                   scheduler=None, on_error="fail", input_name=None, output_name=None,
                   preprocess=None, threads_per_worker=None, n_workers=None,
                   progress=True) -> FolderResult:
    """Predictions for every image of ``folder``, in batches on Dask, written to ``output``.

    folder: .npy files (one C x H x W array each) and, with Pillow installed, PNG and JPEG
    files (read as read_image says), taken in sorted order of their names; other files and
    hidden ones are ignored (listed in the result). Every image must have the first readable
    one's shape.
    output: an .npy file, or a .zarr store (needs zarr): one row per image read, in order.
    scheduler: None starts a LocalCluster (n_workers, threads_per_worker: Dask's defaults when
    None) for the job; an address such as "tcp://host:8786" or a distributed.Client uses that
    cluster; "threads", "processes" or "sync" run on Dask's local schedulers.
    on_error: "fail" stops the job at the first image found that cannot be read (batches run in
    parallel: not necessarily the first in order), raising ValueError with its name; "skip" leaves it out, lists it in the result and warns with every name.
    preprocess: a function applied to each image (C, H, W float32) on the workers, e.g. a
    normalisation; it is sent to the workers, so it must be importable there or picklable.
    output_name: which output to write, for a model with several.
    progress: show Dask's progress bar (distributed.progress, or the local ProgressBar).

    The counts are checked at the end: every image is either a row of the output or skipped.
    Batch results are held by the workers until the client writes them, in order: the
    cluster's memory must hold the whole output once (small for class scores).
    """
    _import_dask()
    path = _model_path(model_path)
    batch_size = _positive(batch_size, "batch_size")
    threads_per_worker = _positive(threads_per_worker, "threads_per_worker", allow_none=True)
    n_workers = _positive(n_workers, "n_workers", allow_none=True)
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if preprocess is not None and not callable(preprocess):
        raise ValueError(f"preprocess must be a function, got {type(preprocess).__name__}")
    output = os.fspath(output)
    if output.endswith(".zarr"):
        if importlib.util.find_spec("zarr") is None:
            raise ImportError("writing a .zarr output needs zarr: pip install zarr")
    elif not output.endswith(".npy"):
        raise ValueError(f"output must be an .npy file or a .zarr store, got {output!r}")
    folder = os.fspath(folder)
    names, ignored = _list_folder(folder)
    if not names:
        raise ValueError(f"folder {folder!r} holds no .npy, PNG or JPEG files")
    decoded = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    if decoded and importlib.util.find_spec("PIL") is None:
        raise ImportError(f"reading PNG and JPEG files ({decoded[0]!r} and {len(decoded) - 1} "
                          f"more) needs Pillow: pip install pillow")

    model = _state.model(path)
    name = _input_name(model, input_name)
    out = _output_names(model, output_name)
    if len(out) != 1:
        raise ValueError(f"the model has outputs {out}: choose one with output_name")
    out = out[0]
    paths = [os.path.join(folder, n) for n in names]
    shape, first_reason = None, None
    for p in paths:       # the first readable image gives the shape every image must have
        a, reason = _read_or_reason(p, preprocess)
        if a is not None:
            shape = a.shape
            break
        if on_error == "fail":
            raise ValueError(f"bad image {os.path.basename(p)!r}: {reason}")
        first_reason = first_reason or f"{os.path.basename(p)!r}: {reason}"
    if shape is None:
        raise ValueError(f"none of the {len(paths)} images in {folder!r} can be read; the "
                         f"first: {first_reason}")
    tail, dtype = _probe(model, name, shape, [out])[out]

    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    args = (shape, path, name, out, tuple(tail), dtype, threads_per_worker,
            on_error == "skip", preprocess)
    to_close = []
    try:
        if isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS:
            results = _results_local(scheduler, batches, args, progress)
        else:
            client, to_close = _open_client(scheduler, n_workers, threads_per_worker)
            results = _results_distributed(client, batches, args, progress)
        writer = None
        files, skipped = [], []
        try:
            for batch, (rows, bad) in zip(batches, results):
                if len(rows) + len(bad) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} images gave {len(rows)} "
                                       f"rows and {len(bad)} skipped images")
                if writer is None:
                    writer = (_ZarrWriter(output, len(paths), tail, dtype, batch_size)
                              if output.endswith(".zarr")
                              else _NpyWriter(output, len(paths), tail, dtype))
                writer.write(rows)
                skipped += bad
                gone = {b for b, _ in bad}
                files += [os.path.basename(p) for p in batch
                          if os.path.basename(p) not in gone]
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer.rows != len(files) or len(files) + len(skipped) != len(paths):
            writer.abort()
            raise RuntimeError(f"{len(paths)} images gave {writer.rows} rows for "
                               f"{len(files)} read and {len(skipped)} skipped")
        writer.close()
    finally:
        for c in to_close:
            c.close()
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(paths)} images: " + "; ".join(
            f"{n} ({r})" for n, r in skipped), RuntimeWarning, stacklevel=2)
    return FolderResult(output=output, shape=(writer.rows,) + tuple(tail), files=files,
                        skipped=skipped, ignored=ignored)


def run_folder_command(args) -> int:
    """``convengine run MODEL --input FOLDER/``: predict_folder with the command's options,
    skipped images listed on stderr. Raises ValueError, ImportError or OSError for the
    command line to print."""
    import sys
    folder = os.path.normpath(args.input)
    output = args.output
    if output is None:
        output = os.path.basename(os.path.abspath(folder)) + "-predictions.npy"
        if os.path.exists(output):
            raise ValueError(f"{output} exists: name the predictions' file with --output")
    elif not output.endswith((".npy", ".zarr")):
        output += ".npy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # skipped images are printed below
        result = predict_folder(args.model, folder, output=output,
                                batch_size=args.batch_size or DEFAULT_BATCH_SIZE,
                                scheduler=args.scheduler, threads_per_worker=args.threads,
                                on_error="skip" if args.skip_bad else "fail")
    for name, reason in result.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    extra = f", {len(result.ignored)} other files ignored" if result.ignored else ""
    print(f"{len(result.files)} images predicted, {len(result.skipped)} skipped{extra}; "
          f"wrote {result.output}: shape {result.shape}")
    return 0
