"""Reference CNNs in PyTorch, written from their papers, for whole-model tests and benchmarks.

- MobileNetV1: Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
  Mobile Vision Applications", Table 1 (width multiplier 1.0, 224x224, 1000 classes).
- MobileNetV2: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
  Table 2 (width multiplier 1.0): inverted residual blocks, ReLU6, linear bottlenecks.
- DRN-C-26: Yu, Koltun and Funkhouser 2017, "Dilated Residual Networks", Figure 2 and Table 1:
  levels 1-8, output stride 8, levels 5 and 6 dilated by 2 and 4, levels 7 and 8 plain
  (non-residual) 3x3 convolutions with dilation 2 and 1 that remove gridding artifacts.
  Head: the classification one of the paper (global average pooling, then a 1x1 convolution
  to 1000 classes), flattened to (N, 1000). ``segmentation=True`` gives the dense head instead:
  a 1x1 convolution to ``num_classes`` on the stride-8 feature map, no pooling and no upsampling.

Only torch is needed (no torchvision). ``make`` fixes the weights from a seed, draws random
BatchNorm running statistics (so that folding BatchNorm into convolutions changes the numbers
and is really exercised) and puts the model in eval mode. ``export_onnx`` writes an opset-17
ONNX file with the TorchScript-based exporter, which keeps a file self-contained and is the
exporter most deployed models were produced with.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

IMAGENET_CLASSES = 1000


def conv_bn(cin, cout, kernel=3, stride=1, dilation=1, groups=1, act="relu"):
    """Convolution without bias, BatchNorm, then an activation (None for a linear output)."""
    pad = dilation * (kernel - 1) // 2
    layers = [nn.Conv2d(cin, cout, kernel, stride, pad, dilation, groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act is not None:
        raise ValueError(f"act must be 'relu', 'relu6' or None, got {act!r}")
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- MobileNetV1


class MobileNetV1(nn.Module):
    # (output channels, stride) of each depthwise-separable layer, Table 1 of the paper
    SEPARABLE = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                 (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, num_classes=IMAGENET_CLASSES):
        super().__init__()
        layers = [conv_bn(3, 32, 3, stride=2)]
        cin = 32
        for cout, stride in self.SEPARABLE:
            layers.append(conv_bn(cin, cin, 3, stride=stride, groups=cin))   # depthwise
            layers.append(conv_bn(cin, cout, 1))                             # pointwise
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    """Expand with a 1x1 (ReLU6), filter depthwise 3x3 (ReLU6), project with a linear 1x1; the
    shortcut joins the thin bottlenecks when the block keeps resolution and width."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act="relu6"))
        layers.append(conv_bn(hidden, hidden, 3, stride=stride, groups=hidden, act="relu6"))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    # (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper
    BOTTLENECKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                   (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=IMAGENET_CLASSES):
        super().__init__()
        layers = [conv_bn(3, 32, 3, stride=2, act="relu6")]
        cin = 32
        for t, c, n, s in self.BOTTLENECKS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 1280, 1, act="relu6"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- DRN-C-26


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al.); in a DRN the first convolution of a
    dilated level keeps the level's dilation, so the receptive field grows without striding.
    ``residual=False`` drops the shortcut: DRN-C's levels 7 and 8."""

    def __init__(self, cin, cout, stride=1, dilation=1, residual=True):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride=stride, dilation=dilation)
        self.conv2 = conv_bn(cout, cout, 3, dilation=dilation, act=None)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.shortcut = None
        if residual and (stride != 1 or cin != cout):
            self.shortcut = conv_bn(cin, cout, 1, stride=stride, act=None)

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        if self.residual:
            y = y + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(y)


class DRNC26(nn.Module):
    """DRN-C-26. Levels (channels, blocks, stride, dilation, residual):

    1: conv7x7 16 then 1 block 16;  2: 1 block 32, stride 2;  3: 2 blocks 64, stride 2;
    4: 2 blocks 128, stride 2;  5: 2 blocks 256, dilation 2;  6: 2 blocks 512, dilation 4;
    7: 1 non-residual pair of 3x3 convolutions 512, dilation 2;  8: the same, dilation 1.
    25 convolutions on the main path plus the classifier: 26 layers; output stride 8.
    """

    LEVELS = [(16, 1, 1, 1, True), (32, 1, 2, 1, True), (64, 2, 2, 1, True),
              (128, 2, 2, 1, True), (256, 2, 1, 2, True), (512, 2, 1, 4, True),
              (512, 1, 1, 2, False), (512, 1, 1, 1, False)]

    def __init__(self, num_classes=IMAGENET_CLASSES, segmentation=False):
        super().__init__()
        self.stem = conv_bn(3, 16, 7)
        blocks = []
        cin = 16
        for cout, n, stride, dilation, residual in self.LEVELS:
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, dilation, residual))
                cin = cout
        self.features = nn.Sequential(*blocks)
        self.segmentation = segmentation
        self.pool = None if segmentation else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x):
        x = self.features(self.stem(x))
        if self.segmentation:
            return self.fc(x)
        return torch.flatten(self.fc(self.pool(x)), 1)


# --------------------------------------------------------------------------- helpers

MODELS = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "drn_c_26": DRNC26,
}


def make(name, seed=0, **kwargs):
    """The model ``name`` with weights from ``seed``, random BatchNorm statistics, in eval mode.

    Convolution weights are drawn with He (fan-in) scaling and BatchNorm statistics near those
    the layer would see, so activations keep a sane scale through 26+ layers in float32.
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    torch.manual_seed(seed)
    model = MODELS[name](**kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def mobilenet_v1():
    """Zero-argument factories, e.g. for ``convengine bench tests/torch_models.py:drn_c_26``."""
    return make("mobilenet_v1")


def mobilenet_v2():
    return make("mobilenet_v2")


def drn_c_26():
    return make("drn_c_26")


def export_onnx(model, path, size=224, batch=1, opset=17, keep_batchnorm=True):
    """Write ``model`` as ONNX to ``path`` for a (batch, C, size, size) input named "input"
    and one output named "output".

    The TorchScript exporter (``dynamo=False``) is used where it exists: it writes one
    self-contained file, with no external-data side file, from an eval-mode module. Its constant
    folding merges BatchNorm into the preceding convolution; ``keep_batchnorm=True`` turns that
    off so the file has BatchNormalization nodes and the importer's own folding is what runs.
    """
    channels = _input_channels(model)
    x = torch.zeros(batch, channels, size, size)
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset,
                  do_constant_folding=not keep_batchnorm)
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # torch >= 2.9 warns that this exporter is the legacy one; it is chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=False, **kwargs)
        except TypeError:   # a torch older than 2.5 has no dynamo= argument: classic only
            torch.onnx.export(model, (x,), str(path), **kwargs)
    return path


def _input_channels(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError("model has no Conv2d layer to take the input channel count from")


def conv_flops(model, size=224, batch=1):
    """Floating-point operations of one forward pass counted as direct convolution and dense
    matrix products (2 per multiply-add); BatchNorm, activations, pooling and adds are left out,
    as papers count them."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(torch.zeros(batch, _input_channels(model), size, size))
    finally:
        for h in handles:
            h.remove()
    return total
