"""The bundled demo model: its files, that it loads without onnx or torch, and that it
classifies the shipped test split.

The engine's logits are checked against a float64 NumPy reference of the network (DigitsNet as
engine/data/train_digits.py builds it), computed here from the weights in the safetensors file,
read with safetensors itself rather than engine.load, by tests/reference.py's convolution.
The accuracy is counted from predictions against the split's labels, with a fixed floor; the
accuracy recorded in digits_net.json (which the demo prints as "expected") is checked against
the reference's, never used as the expected value.

Tolerance on the logits, per element: |engine - reference| <= TOL * (|reference| +
rms(reference)). Each float32 layer rounds its sums to a few eps32 of the sum of their |terms|,
and the errors reach the logits at the scale of the logits as a whole; TOL = 1e-5 (~80 eps32),
the largest error measured being under 1e-6 of that scale. The reference's two best logits of
every image are much further apart than the bound, so the engine's predictions must be the
reference's, image by image.
"""
import functools
import json
import os
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

import engine
from reference import conv2d_ref

# subprocesses start here, not in the checkout, so that `import engine` finds the installed
# package rather than the source tree without its compiled kernels
HERE = os.path.dirname(os.path.abspath(__file__))

DATA = resources.files("engine.data")
MODEL = str(DATA.joinpath("digits_net.safetensors"))
TEST = str(DATA.joinpath("digits_test.npz"))
INFO = str(DATA.joinpath("digits_net.json"))

TOL = 1e-5
# a trained model, not a lucky one: chance is 10%; 95% is what the model was trained to reach
ACCURACY_FLOOR = 0.95

# DigitsNet (engine/data/train_digits.py), one row per convolution, BatchNorm folded into its
# weights as the native file stores them: (name, kernel, stride, dilation, groups, activation)
F = "/features/features."
STEM = [(F + "0/features.0.0/Conv", 3, 1, 1, 1, "relu"),
        (F + "1/features.1.0/Conv", 3, 1, 1, 16, "relu6"),      # separable: depthwise
        (F + "2/features.2.0/Conv", 1, 1, 1, 1, "relu6"),       # and pointwise
        (F + "3/features.3.0/Conv", 3, 2, 1, 32, "relu6"),      # separable, stride 2
        (F + "4/features.4.0/Conv", 1, 1, 1, 1, "relu6")]
DILATED = [(F + "5/body/body.0/body.0.0/Conv", 3, 1, 2, 1, "relu"),
           (F + "5/body/body.1/body.1.0/Conv", 3, 1, 2, 1, None)]      # + x, then ReLU
INVERTED = [(F + "6/body/body.0/body.0.0/Conv", 1, 1, 1, 1, "relu6"),
            (F + "6/body/body.1/body.1.0/Conv", 3, 1, 1, 96, "relu6"),
            (F + "6/body/body.2/body.2.0/Conv", 1, 1, 1, 1, None)]     # + x, linear


def _info():
    with open(INFO) as f:
        return json.load(f)


def _test_split():
    with np.load(TEST) as d:
        return d["images"], d["labels"]


@functools.lru_cache(maxsize=1)
def reference_logits():
    """The shipped network's logits on the shipped test split, in float64 (read-only)."""
    from safetensors.numpy import load_file
    weights = {k: v.astype(np.float64) for k, v in load_file(MODEL).items()}

    def run(x, layers):
        for name, k, stride, dilation, groups, act in layers:
            pad = dilation * (k - 1) // 2
            x = conv2d_ref(x, weights[name + ".weight_bn"], weights[name + ".bias_bn"],
                           stride=(stride, stride), pads=((pad, pad), (pad, pad)),
                           dilation=(dilation, dilation), groups=groups)
            if act == "relu":
                x = np.maximum(x, 0)
            elif act == "relu6":
                x = np.clip(x, 0, 6)
        return x

    x = run(_test_split()[0].astype(np.float64), STEM)
    x = np.maximum(x + run(x, DILATED), 0)
    x = x + run(x, INVERTED)
    logits = x.mean(axis=(2, 3)) @ weights["fc.weight"].T + weights["fc.bias"]
    logits.flags.writeable = False
    return logits


def reference_correct():
    """How many test images the reference network classifies correctly."""
    return int((reference_logits().argmax(1) == _test_split()[1]).sum())


def check_logits(logits, rows=slice(None)):
    """logits (N, 10) of the test images ``rows`` (all of them by default): close to the
    reference's, per element, and so the same predictions."""
    ref = reference_logits()[rows]
    assert logits.shape == ref.shape and logits.dtype == np.float32
    err = np.abs(logits.astype(np.float64) - ref)
    bound = TOL * (np.abs(ref) + np.sqrt(np.mean(ref ** 2)))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
    top2 = np.sort(ref, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 2 * bound.max(axis=1))   # no near ties
    np.testing.assert_array_equal(logits.argmax(1), ref.argmax(1))


def test_files_are_shipped_and_small():
    sizes = [os.path.getsize(p) for p in (MODEL, TEST, INFO)]
    assert sum(sizes) < 1_000_000, sizes
    images, labels = _test_split()
    info = _info()
    assert images.dtype == np.float32 and images.shape == (len(labels), 1, 16, 16)
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert len(labels) == info["split"]["test_images"] == 360


def test_reference_network_is_trained_and_its_accuracy_is_the_recorded_one():
    labels = _test_split()[1]
    correct = reference_correct()
    assert correct >= ACCURACY_FLOOR * len(labels), correct
    # digits_net.json's accuracies (the engine's at training time, which the demo prints as
    # "expected", and PyTorch's): the same images right, since no image's two best logits
    # are close enough for float32 rounding to swap them (check_logits)
    info = _info()
    assert info["test_accuracy"] * len(labels) == pytest.approx(correct, abs=1e-6)
    assert info["test_accuracy_torch"] * len(labels) == pytest.approx(correct, abs=1e-6)


def test_logits_match_the_reference_network(threads):
    model = engine.load(MODEL)
    images, labels = _test_split()
    logits = model.run({"input": images})["logits"]
    check_logits(logits)
    assert (logits.argmax(1) == labels).mean() >= ACCURACY_FLOOR


def test_batch_of_one_agrees_with_the_reference():
    model = engine.load(MODEL)
    images, _ = _test_split()
    for i in (0, 17, 359):
        check_logits(model(images[i:i + 1]), [i])


def test_model_declares_its_interface():
    model = engine.load(MODEL)
    names = [getattr(i, "name", None) or i[0] for i in model.inputs]
    assert names == ["input"]
    out_names = [getattr(o, "name", None) or o[0] for o in model.outputs]
    assert out_names == ["logits"]


def test_loads_and_runs_without_onnx_or_torch(tmp_path):
    # Importing these would fail in a fresh install with only the runtime dependencies; None in
    # sys.modules makes any import of them raise ImportError here.
    code = (
        "import sys\n"
        "for m in ('onnx', 'onnxruntime', 'torch', 'sklearn'):\n"
        "    sys.modules[m] = None\n"
        "import numpy as np, engine\n"
        f"model = engine.load({MODEL!r})\n"
        f"d = np.load({TEST!r})\n"
        "np.save(sys.argv[1], model(d['images']))\n"
    )
    out_path = tmp_path / "logits.npy"
    out = subprocess.run([sys.executable, "-c", code, str(out_path)], capture_output=True,
                         text=True, timeout=120, cwd=HERE)
    assert out.returncode == 0, out.stderr
    check_logits(np.load(out_path))


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
