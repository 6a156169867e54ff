"""A folder of images through a model on Dask: .npy, PNG and JPEG files read in fixed batches
on the workers, the predictions written to one .npy file or Zarr store in the files' order
(engine.dask.predict_folder, ``convengine run MODEL --input FOLDER/``)."""
from __future__ import annotations

import importlib.util
import os
import uuid
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from . import (DEFAULT_BATCH_SIZE, IMAGE_SUFFIXES, LOCAL_SCHEDULERS, NPY_SUFFIXES, _import_dask,
               _import_distributed, _input_name, _model_path, _output_names, _positive, _probe,
               _run_rows, _state, _batch_threads)


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
