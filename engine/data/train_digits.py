"""Train the bundled demo model on scikit-learn's handwritten digits and write its files.

    python engine/data/train_digits.py [--epochs 60] [--out engine/data] [--onnx PATH]

Needs torch and scikit-learn (only here: the shipped files need neither). Writes, into --out:

- digits_test.npz         the held-out test split: images float32 (N, 1, 16, 16), labels int64
- digits_net.safetensors  the trained model in convengine's native format (needs engine.load)
- digits_net.json         the model's description and its accuracy on the test split

The ONNX export goes to --onnx (default: a temporary directory), outside the package.

Data: the 1797 8x8 digits (pixel values 0..16) are split 80/20, stratified by label, with a
fixed seed; each image is scaled to [0, 1], enlarged to 16x16 by bilinear interpolation (so the
network has room for a stride-2 stage and a dilated stage) and standardised with the training
set's mean and standard deviation.

Model (DigitsNet, 1x16x16 -> 10 logits), MobileNet and DRN ideas at toy size:
  stem       conv3x3 1->16, BN, ReLU                                     16x16
  separable  depthwise 3x3 16, BN, ReLU6; pointwise 16->32, BN, ReLU6     16x16
  separable  depthwise 3x3 stride 2 32, BN, ReLU6; pointwise 32->48, ReLU6  8x8
  dilated    residual block: two 3x3 convs 48->48 with dilation 2, BN, ReLU, add  8x8
  inverted   residual: pointwise 48->96 ReLU6, depthwise 3x3 ReLU6, linear 96->48, add  8x8
  head       global average pool, linear 48->10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings

import numpy as np

SEED = 20240601
TEST_FRACTION = 0.2
SIZE = 16


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation with half-pixel centres, as
    torch.nn.functional.interpolate(mode="bilinear", align_corners=False) samples."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        a[i, lo] += 1.0 - frac
        a[i, hi] += frac
    return a


def prepare(images8: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(N, 8, 8) digits with values 0..16 -> standardised float32 (N, 1, SIZE, SIZE)."""
    a = bilinear_matrix(8, SIZE)
    x = np.einsum("ij,njk,lk->nil", a, images8 / 16.0, a)
    return ((x - mean) / std).astype(np.float32)[:, None]


def split_digits():
    """The fixed stratified split: (x_train, y_train, x_test, y_test, mean, std)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    tr8, te8, y_tr, y_te = train_test_split(
        digits.images, digits.target, test_size=TEST_FRACTION, random_state=SEED,
        stratify=digits.target)
    raw = prepare(tr8, 0.0, 1.0)
    mean, std = float(raw.mean()), float(raw.std())
    return (prepare(tr8, mean, std), y_tr.astype(np.int64), prepare(te8, mean, std),
            y_te.astype(np.int64), mean, std)


def build_model():
    import torch
    from torch import nn

    def conv_bn(cin, cout, k=3, stride=1, dilation=1, groups=1, act=nn.ReLU):
        pad = dilation * (k - 1) // 2
        layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation, groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class DilatedResidual(nn.Module):
        def __init__(self, c, dilation):
            super().__init__()
            self.body = nn.Sequential(conv_bn(c, c, dilation=dilation),
                                      conv_bn(c, c, dilation=dilation, act=None))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x + self.body(x))

    class InvertedResidual(nn.Module):
        def __init__(self, c, expand):
            super().__init__()
            h = c * expand
            self.body = nn.Sequential(conv_bn(c, h, 1, act=nn.ReLU6),
                                      conv_bn(h, h, groups=h, act=nn.ReLU6),
                                      conv_bn(h, c, 1, act=None))

        def forward(self, x):
            return x + self.body(x)

    class DigitsNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                conv_bn(1, 16),
                conv_bn(16, 16, groups=16, act=nn.ReLU6), conv_bn(16, 32, 1, act=nn.ReLU6),
                conv_bn(32, 32, stride=2, groups=32, act=nn.ReLU6),
                conv_bn(32, 48, 1, act=nn.ReLU6),
                DilatedResidual(48, dilation=2),
                InvertedResidual(48, expand=2),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(48, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    return DigitsNet()


def shift_batch(x, rng):
    """Random translations by up to one pixel (zero fill): the digits are not centred exactly,
    and the small training set (1437 images) overfits without it."""
    import torch
    out = torch.zeros_like(x)
    dy, dx = rng.integers(-1, 2, size=2)
    h, w = x.shape[2:]
    out[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def train(x_tr, y_tr, epochs):
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * ((len(x_tr) + 63) // 64))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            xb = shift_batch(xt[idx], rng)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}")
    return model.eval()


def accuracy_torch(model, x, y):
    import torch
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                   help="directory for the shipped files (default: this package directory)")
    p.add_argument("--onnx", default=None, help="where to write the ONNX export")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(1)   # a fixed thread count keeps the float sums, and so the run, fixed
    x_tr, y_tr, x_te, y_te, mean, std = split_digits()
    print(f"train {x_tr.shape}, test {x_te.shape}, mean {mean:.4f}, std {std:.4f}")
    model = train(x_tr, y_tr, args.epochs)
    train_acc = accuracy_torch(model, x_tr, y_tr)
    test_acc = accuracy_torch(model, x_te, y_te)
    print(f"torch: train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}")

    os.makedirs(args.out, exist_ok=True)
    onnx_path = args.onnx or os.path.join(tempfile.mkdtemp(), "digits_net.onnx")
    x0 = torch.zeros(1, 1, SIZE, SIZE)
    # BatchNorm stays in the file (no exporter constant folding): the importer folds it.
    # The TorchScript exporter is deprecated in torch >= 2.9 but writes one plain file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x0,), onnx_path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=False)
    print(f"wrote {onnx_path}")
    np.savez_compressed(os.path.join(args.out, "digits_test.npz"), images=x_te, labels=y_te)

    info = {
        "name": "DigitsNet",
        "dataset": "scikit-learn load_digits, 8x8 enlarged to 16x16 (bilinear), standardised",
        "input": {"name": "input", "shape": [None, 1, SIZE, SIZE], "mean": mean, "std": std},
        "classes": list(range(10)),
        "split": {"test_fraction": TEST_FRACTION, "stratified": True, "seed": SEED,
                  "train_images": int(len(y_tr)), "test_images": int(len(y_te))},
        "epochs": args.epochs,
        "train_accuracy": train_acc,
        "test_accuracy_torch": test_acc,
        "test_accuracy": test_acc,
    }
    try:
        import engine
        engine_load = engine.load
    except (ImportError, AttributeError):
        engine_load = None
        print("engine.load is not available: digits_net.safetensors not written", file=sys.stderr)
    if engine_load is not None:
        native = os.path.join(args.out, "digits_net.safetensors")
        engine_load(onnx_path).save(native)
        os.chmod(native, 0o644)   # safetensors writes owner-only files; this one is shipped
        model_e = engine_load(native)
        pred = model_e.run({"input": x_te})["logits"].argmax(1)
        info["test_accuracy"] = float((pred == y_te).mean())
        print(f"engine: test accuracy {info['test_accuracy']:.4f}; wrote {native}")
    with open(os.path.join(args.out, "digits_net.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
