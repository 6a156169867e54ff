"""engine.dask: batch inference on a Dask cluster (LocalCluster, 2 worker processes, 1 thread each).

The reference is a local ``model.run`` on the same batches: predictions must be equal bit for
bit (the kernels do not depend on the thread count, and a task runs exactly that batch). Against
one run of the whole array, where the batch size may change a Gemm's path, the tolerance is
float32 rounding: rtol 1e-5, atol 1e-6.
"""
import os

import numpy as np
import pytest

import engine
from children import run_python
from engine.graph import Graph, Model, Node, TensorSpec

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import dask  # noqa: E402
import engine.dask as edask  # noqa: E402

N_IMAGES, SHAPE, BATCH = 300, (3, 32, 32), 64


def small_cnn(path, *, batch=None, two_outputs=False, reduce_batch=False, seed=0):
    """Conv-Relu, strided Conv-Relu, GlobalAveragePool, Flatten, Gemm: 3 channels -> 5 scores.
    reduce_batch adds a mean over the batch, whose rows do not belong to images."""
    rng = np.random.default_rng(seed)
    consts = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
              "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
              "w2": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
              "b2": rng.standard_normal(16).astype(np.float32) * 0.1,
              "wf": rng.standard_normal((5, 16)).astype(np.float32) * 0.3,
              "bf": rng.standard_normal(5).astype(np.float32) * 0.1}
    nodes = [Node("Conv", "conv1", ["x", "w1", "b1"], ["c1"], {"pads": [1, 1, 1, 1]}),
             Node("Relu", "relu1", ["c1"], ["r1"]),
             Node("Conv", "conv2", ["r1", "w2", "b2"], ["c2"],
                  {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
             Node("Relu", "relu2", ["c2"], ["r2"]),
             Node("GlobalAveragePool", "gap", ["r2"], ["g"]),
             Node("Flatten", "flatten", ["g"], ["f"], {"axis": 1}),
             Node("Gemm", "fc", ["f", "wf", "bf"], ["y"], {"transB": 1})]
    outputs = [TensorSpec("y", None, "float32")]
    if two_outputs:      # the features before pooling too: N x 16 x 16 x 16
        outputs.append(TensorSpec("r2", None, "float32"))
    if reduce_batch:
        nodes.append(Node("ReduceMean", "mean", ["y"], ["m"], {"axes": [0], "keepdims": 1}))
        outputs = [TensorSpec("m", None, "float32")]
    graph = Graph(nodes, [TensorSpec("x", (batch, 3, None, None), "float32")], outputs, consts)
    Model(graph).save(path)
    return path


def batched_reference(model, x, batch_size, output="y"):
    return np.concatenate([model.run({"x": x[i:i + batch_size]})[output]
                           for i in range(0, len(x), batch_size)])


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return small_cnn(str(tmp_path_factory.mktemp("model") / "cnn.safetensors"))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).random((N_IMAGES,) + SHAPE, dtype=np.float32)


def test_predict_equals_local_run_and_loads_once_per_worker(client, model_path, images,
                                                            monkeypatch):
    # a model that reached a task's arguments would be pickled on its way to the workers
    def refuse(self, *a):
        raise AssertionError("a Model was pickled")
    monkeypatch.setattr(Model, "__reduce_ex__", refuse)
    client.run(lambda: edask._state.__init__())      # fresh counters on every worker
    arr = da.from_array(images, chunks=50)           # rechunked to BATCH inside
    y = edask.predict(model_path, arr, batch_size=BATCH)
    assert isinstance(y, da.Array) and y.shape == (N_IMAGES, 5) and y.dtype == np.float32
    assert y.chunks[0] == (64, 64, 64, 64, 44)
    got = y.compute()
    again = edask.predict(model_path, arr, batch_size=BATCH).compute()

    local = engine.load(model_path)
    ref = batched_reference(local, images, BATCH)
    assert np.array_equal(got, ref)
    assert np.array_equal(again, ref)
    np.testing.assert_allclose(got, local.run({"x": images})["y"], rtol=1e-5, atol=1e-6)

    stats = client.run(edask.process_stats)
    assert sum(s["batches"] for s in stats.values()) == 2 * 5     # two computes of 5 batches
    for s in stats.values():
        assert s["loads"] == (1 if s["batches"] else 0)


def test_a_replaced_model_file_is_loaded_again(tmp_path, images):
    path = small_cnn(str(tmp_path / "m.safetensors"), seed=1)
    edask._state.__init__()
    x = da.from_array(images[:8], chunks=8)
    first = edask.predict(path, x, batch_size=8).compute(scheduler="sync")
    edask.predict(path, x, batch_size=8).compute(scheduler="sync")
    assert edask.process_stats()["loads"] == 1
    os.remove(path)
    small_cnn(path, seed=2)                       # same path, another file
    second = edask.predict(path, x, batch_size=8).compute(scheduler="sync")
    assert edask.process_stats()["loads"] == 2
    assert np.array_equal(second, engine.load(path).run({"x": images[:8]})["y"])
    assert not np.array_equal(first, second)


def test_thread_budget_follows_the_worker(client):
    # every worker has 1 thread: a batch never takes more, whatever is asked
    assert client.submit(edask._batch_threads, None, pure=False).result() == 1
    assert client.submit(edask._batch_threads, 4, pure=False).result() == 1
    # outside a worker: threads_per_worker, else 1
    assert edask._batch_threads(None) == 1
    assert edask._batch_threads(3) == 3


def test_several_outputs_share_one_run(tmp_path, images):
    path = small_cnn(str(tmp_path / "two.safetensors"), two_outputs=True)
    x = images[:70]
    edask._state.__init__()
    out = edask.predict(path, da.from_array(x, chunks=70), batch_size=32)
    assert set(out) == {"y", "r2"} and out["r2"].shape == (70, 16, 16, 16)
    y, r2 = dask.compute(out["y"], out["r2"], scheduler="sync")
    local = engine.load(path)
    assert np.array_equal(y, batched_reference(local, x, 32, "y"))
    assert np.array_equal(r2, batched_reference(local, x, 32, "r2"))
    assert edask.process_stats()["batches"] == 3      # 32 + 32 + 6 images, both outputs
    one = edask.predict(path, da.from_array(x, chunks=70), batch_size=32, output="r2")
    assert one.chunks == ((32, 32, 6), (16,), (16,), (16,), )
    assert np.array_equal(one.compute(scheduler="sync"), r2)
    listed = edask.predict(path, da.from_array(x, chunks=70), batch_size=32, output=["y"])
    assert list(listed) == ["y"] and np.array_equal(listed["y"].compute(scheduler="sync"), y)


def test_fixed_batch_dimension_runs_in_pieces(tmp_path, images):
    path = small_cnn(str(tmp_path / "fixed.safetensors"), batch=4)
    x = images[:10]
    got = edask.predict(path, x, batch_size=10).compute(scheduler="sync")
    local = engine.load(path)
    padded = np.concatenate([x, np.zeros((2,) + SHAPE, np.float32)])
    assert np.array_equal(got, batched_reference(local, padded, 4)[:10])


def test_bad_arguments(model_path, images):
    arr = da.from_array(images, chunks=100)
    with pytest.raises(ValueError, match="4 dimensions"):
        edask.predict(model_path, arr[0])
    with pytest.raises(ValueError, match="float32"):
        edask.predict(model_path, arr.astype(np.float64))
    with pytest.raises(ValueError, match="batch_size"):
        edask.predict(model_path, arr, batch_size=0)
    with pytest.raises(ValueError, match="'z' is not an output"):
        edask.predict(model_path, arr, output="z")
    with pytest.raises(ValueError, match="cannot run on images of shape"):
        edask.predict(model_path, da.zeros((4, 2, 8, 8), dtype=np.float32))
    with pytest.raises(FileNotFoundError):
        edask.predict(model_path + ".missing", arr)


def test_dask_is_imported_only_when_used(tmp_path):
    code = ("import sys, engine, engine.dask; assert 'dask' not in sys.modules, 'imported';"
            "sys.modules['dask'] = None\n"
            "try:\n    engine.dask.predict('m', None)\n"
            "except ImportError as e:\n    print(e)")
    out = run_python(["-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "pip install convengine[dask]" in out.stdout


# --------------------------------------------------------------------------- folders

def make_folder(root, rng, n_npy=21, n_png=6):
    """n_npy .npy images and n_png PNGs (when Pillow is there), one corrupt file of each kind,
    and a text file to ignore. Returns (folder, {name: reference image}, corrupt names)."""
    folder = root / "images"
    folder.mkdir()
    good = {}
    for i in range(n_npy):
        a = rng.random(SHAPE, dtype=np.float32)
        np.save(folder / f"img{i:03d}.npy", a)
        good[f"img{i:03d}.npy"] = a
    (folder / "img007b.npy").write_bytes(b"\x93NUMPY not really")
    corrupt = ["img007b.npy"]
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        for i in range(n_png):
            hwc = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(hwc).save(folder / f"pic{i:02d}.png")
            good[f"pic{i:02d}.png"] = hwc.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        (folder / "pic02b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        corrupt.append("pic02b.png")
    (folder / "notes.txt").write_text("not an image")
    return folder, good, corrupt


def folder_reference(model, good, corrupt, batch_size):
    """model.run on the runner's batches: sorted files in groups of batch_size, the corrupt
    ones left out of their group."""
    names = sorted(list(good) + corrupt)
    rows = []
    for i in range(0, len(names), batch_size):
        batch = [good[n] for n in names[i:i + batch_size] if n in good]
        if batch:
            rows.append(model.run({"x": np.stack(batch)})["y"])
    return np.concatenate(rows), [n for n in names if n in good]


def test_folder_skip_reports_bad_files_and_writes_the_rest(client, model_path, tmp_path, capsys):
    folder, good, corrupt = make_folder(tmp_path, np.random.default_rng(3))
    out = str(tmp_path / "pred.npy")
    with pytest.warns(RuntimeWarning) as warned:
        result = edask.predict_folder(model_path, folder, output=out, batch_size=8,
                                      scheduler=client, on_error="skip")
    for name in corrupt:
        assert name in str(warned[0].message)
    assert sorted(n for n, _ in result.skipped) == sorted(corrupt)
    assert result.ignored == ["notes.txt"]
    ref, names = folder_reference(engine.load(model_path), good, corrupt, 8)
    assert result.files == names and len(names) == len(good)
    got = np.load(out)
    assert got.shape == result.shape == (len(good), 5)
    assert np.array_equal(got, ref)
    assert not os.path.exists(out + ".partial")
    assert "Completed" in capsys.readouterr().out        # Dask's progress bar


def test_folder_fail_names_the_bad_file(client, model_path, tmp_path):
    folder, _, corrupt = make_folder(tmp_path, np.random.default_rng(4))
    out = str(tmp_path / "pred.npy")
    # on the cluster: the worker's error reaches the client with the file's name (batches run
    # in parallel, so the first bad file found may be either)
    with pytest.raises(ValueError, match="|".join(n.replace(".", r"\.") for n in corrupt)):
        edask.predict_folder(model_path, folder, output=out, batch_size=8, scheduler=client,
                             progress=False)
    # the first file bad: found on the client before any task is sent
    os.rename(folder / "img000.npy", folder / "aaa.npy")
    (folder / "aaa.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="aaa.npy"):
        edask.predict_folder(model_path, folder, output=out, scheduler="sync", progress=False)
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_folder_rows_must_be_images(tmp_path, images):
    # a model whose output has one row per batch: the per-batch count check refuses it
    path = small_cnn(str(tmp_path / "mean.safetensors"), reduce_batch=True)
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(5):
        np.save(folder / f"{i}.npy", images[i])
    with pytest.raises(ValueError, match="first dimension is not the batch"):
        edask.predict_folder(path, folder, output=str(tmp_path / "o.npy"), batch_size=3,
                             scheduler="sync", progress=False)


def test_folder_local_scheduler_with_preprocess_and_zarr(model_path, tmp_path, capsys):
    folder, good, corrupt = make_folder(tmp_path, np.random.default_rng(5), n_png=0)
    good = {k: v * np.float32(2) for k, v in good.items()}
    out = str(tmp_path / "pred.npy")
    with pytest.warns(RuntimeWarning):
        edask.predict_folder(model_path, folder, output=out, batch_size=5, scheduler="threads",
                             on_error="skip", preprocess=_double)
    ref, _ = folder_reference(engine.load(model_path), good, corrupt[:1], 5)
    assert np.array_equal(np.load(out), ref)
    assert "Completed" in capsys.readouterr().out        # dask.diagnostics.ProgressBar
    zarr = pytest.importorskip("zarr")
    zout = str(tmp_path / "pred.zarr")
    with pytest.warns(RuntimeWarning):
        edask.predict_folder(model_path, folder, output=zout, batch_size=5, scheduler="sync",
                             on_error="skip", preprocess=_double, progress=False)
    assert np.array_equal(zarr.open_array(zout, mode="r")[:], ref)


def _double(a):
    return a * np.float32(2)


def test_folder_on_a_cluster_of_its_own(model_path, tmp_path):
    # no scheduler given: a LocalCluster is started for the job and closed after it
    folder = tmp_path / "f"
    folder.mkdir()
    x = np.random.default_rng(8).random((7,) + SHAPE, dtype=np.float32)
    for i, a in enumerate(x):
        np.save(folder / f"{i}.npy", a)
    out = str(tmp_path / "o.npy")
    result = edask.predict_folder(model_path, folder, output=out, batch_size=4, n_workers=1,
                                  threads_per_worker=1, progress=False)
    assert result.files == [f"{i}.npy" for i in range(7)] and not result.skipped
    assert np.array_equal(np.load(out), batched_reference(engine.load(model_path), x, 4))


def test_cli_runs_a_folder_on_a_cluster(client, model_path, tmp_path, capsys):
    from engine.cli import main
    folder, good, corrupt = make_folder(tmp_path, np.random.default_rng(6))
    out = str(tmp_path / "cli.npy")
    address = client.scheduler.address
    assert main(["run", model_path, "--input", str(folder), "--output", out, "--skip-bad",
                 "--scheduler", address, "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    for name in corrupt:
        assert f"skipped {name}" in captured.err
    assert f"{len(good)} images predicted" in captured.out
    ref, _ = folder_reference(engine.load(model_path), good, corrupt, 8)
    assert np.array_equal(np.load(out), ref)
    # without --skip-bad the job fails, naming the file, exit code 2
    assert main(["run", model_path, "--input", str(folder), "--output", out,
                 "--scheduler", address]) == 2
    err = capsys.readouterr().err
    assert "bad image" in err and any(name in err for name in corrupt)


def test_a_worker_that_dies_mid_batch_has_its_batch_retried(model_path, tmp_path):
    """The first batch to reach a worker kills that worker's process; Dask (its nanny and
    the scheduler's allowed-failures) retries the batch on a live worker, and the output is
    still exactly the local run's, every image counted once."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(11)
    x = rng.random((24,) + SHAPE, dtype=np.float32)
    for i, a in enumerate(x):
        np.save(folder / f"img{i:03d}.npy", a)
    marker = str(tmp_path / "died")

    def preprocess(a, _marker=marker):
        import os
        import distributed
        try:
            distributed.get_worker()
        except ValueError:
            return a                         # on the client, reading the first image
        if not os.path.exists(_marker):
            open(_marker, "w").close()
            os._exit(1)                      # this worker's process dies mid-batch
        return a

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        out = str(tmp_path / "pred.npy")
        result = edask.predict_folder(model_path, folder, output=out, batch_size=8,
                                      scheduler=c, preprocess=preprocess, progress=False)
    assert os.path.exists(marker)            # a worker did die
    assert result.files == [f"img{i:03d}.npy" for i in range(24)] and not result.skipped
    np.testing.assert_array_equal(np.load(out), batched_reference(engine.load(model_path), x, 8))
