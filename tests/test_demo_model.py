"""The bundled demo model: its files, that it loads without onnx or torch, and that it still
classifies the shipped test split as well as when it was trained."""
import json
import os
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

import engine

# subprocesses start here, not in the checkout, so that `import engine` finds the installed
# package rather than the source tree without its compiled kernels
HERE = os.path.dirname(os.path.abspath(__file__))

DATA = resources.files("engine.data")
MODEL = str(DATA.joinpath("digits_net.safetensors"))
TEST = str(DATA.joinpath("digits_test.npz"))
INFO = str(DATA.joinpath("digits_net.json"))

# The accuracy written at training time came from this engine on this split; a change of
# kernels may flip an image whose two best logits are within float32 rounding, not more.
ACCURACY_TOLERANCE = 0.005


def _info():
    with open(INFO) as f:
        return json.load(f)


def _test_split():
    with np.load(TEST) as d:
        return d["images"], d["labels"]


def test_files_are_shipped_and_small():
    sizes = [os.path.getsize(p) for p in (MODEL, TEST, INFO)]
    assert sum(sizes) < 1_000_000, sizes
    images, labels = _test_split()
    info = _info()
    assert images.dtype == np.float32 and images.shape == (len(labels), 1, 16, 16)
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert len(labels) == info["split"]["test_images"] == 360
    # a trained model, not a lucky one: well above chance (10%) and above the brief's 95%
    assert info["test_accuracy"] > 0.95
    # this engine's accuracy at training time was PyTorch's on the same split
    assert abs(info["test_accuracy"] - info["test_accuracy_torch"]) <= ACCURACY_TOLERANCE


def test_accuracy_matches_recorded(threads):
    model = engine.load(MODEL)
    images, labels = _test_split()
    logits = model.run({"input": images})["logits"]
    assert logits.shape == (len(labels), 10) and logits.dtype == np.float32
    acc = float((logits.argmax(1) == labels).mean())
    assert abs(acc - _info()["test_accuracy"]) <= ACCURACY_TOLERANCE, acc


def test_batch_of_one_agrees_with_whole_batch():
    model = engine.load(MODEL)
    images, _ = _test_split()
    whole = model.run({"input": images})["logits"]
    for i in (0, 17, 359):
        one = model(images[i:i + 1])
        np.testing.assert_allclose(one, whole[i:i + 1], rtol=1e-4, atol=1e-4)


def test_model_declares_its_interface():
    model = engine.load(MODEL)
    names = [getattr(i, "name", None) or i[0] for i in model.inputs]
    assert names == ["input"]
    out_names = [getattr(o, "name", None) or o[0] for o in model.outputs]
    assert out_names == ["logits"]


def test_loads_and_runs_without_onnx_or_torch():
    # Importing these would fail in a fresh install with only the runtime dependencies; None in
    # sys.modules makes any import of them raise ImportError here.
    code = (
        "import sys, json\n"
        "for m in ('onnx', 'onnxruntime', 'torch', 'sklearn'):\n"
        "    sys.modules[m] = None\n"
        "import numpy as np, engine\n"
        f"model = engine.load({MODEL!r})\n"
        f"d = np.load({TEST!r})\n"
        "acc = float((model(d['images']).argmax(1) == d['labels']).mean())\n"
        "print(json.dumps(acc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=HERE)
    assert out.returncode == 0, out.stderr
    acc = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(acc - _info()["test_accuracy"]) <= ACCURACY_TOLERANCE


def test_shipped_split_is_the_documented_preparation():
    pytest.importorskip("sklearn")
    from engine.data import train_digits

    _, _, x_te, y_te, mean, std = train_digits.split_digits()
    images, labels = _test_split()
    np.testing.assert_array_equal(labels, y_te)
    np.testing.assert_allclose(images, x_te, rtol=0, atol=1e-6)
    info = _info()["input"]
    assert (info["mean"], info["std"]) == pytest.approx((mean, std), rel=1e-6)


def test_bilinear_matrix_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    from engine.data.train_digits import SIZE, bilinear_matrix

    x = np.random.default_rng(0).random((4, 8, 8))
    a = bilinear_matrix(8, SIZE)
    ours = np.einsum("ij,njk,lk->nil", a, x, a)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=(SIZE, SIZE),
                                          mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
