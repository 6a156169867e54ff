"""torchvision's model zoo as ONNX files: random weights (nothing is downloaded), random
BatchNorm statistics, eval mode, exported with the TorchScript-based exporter at a chosen opset
with a free batch axis.

torchvision's wheel on the package index is a CUDA build; beside the CPU torch its compiled
operators (torchvision::nms, ...) are missing and the two modules that register Python
implementations for them fail at import. The model definitions use none of them, so
``import_torchvision`` imports torchvision with those two modules replaced by empty ones.
"""
from __future__ import annotations

import io
import sys
import types
import warnings

# name -> (builder, input shape at full size (C, H, W) or (C, T, H, W), smallest side that the
# architecture accepts, builder keyword arguments)
CLASSIFICATION = {
    "alexnet": ((3, 224, 224), 63, {}),
    "vgg11": ((3, 224, 224), 32, {}),
    "vgg11_bn": ((3, 224, 224), 32, {}),
    "vgg16": ((3, 224, 224), 32, {}),
    "vgg16_bn": ((3, 224, 224), 32, {}),
    "resnet18": ((3, 224, 224), 32, {}),
    "resnet50": ((3, 224, 224), 32, {}),
    "resnext50_32x4d": ((3, 224, 224), 32, {}),
    "wide_resnet50_2": ((3, 224, 224), 32, {}),
    "squeezenet1_0": ((3, 224, 224), 48, {}),
    "squeezenet1_1": ((3, 224, 224), 48, {}),
    "densenet121": ((3, 224, 224), 32, {}),
    "inception_v3": ((3, 299, 299), 75, {"aux_logits": False, "init_weights": True}),
    "googlenet": ((3, 224, 224), 32, {"aux_logits": False, "init_weights": True}),
    "shufflenet_v2_x1_0": ((3, 224, 224), 32, {}),
    "mobilenet_v2": ((3, 224, 224), 32, {}),
    "mobilenet_v3_small": ((3, 224, 224), 32, {}),
    "mobilenet_v3_large": ((3, 224, 224), 32, {}),
    "mnasnet1_0": ((3, 224, 224), 32, {}),
    "efficientnet_b0": ((3, 224, 224), 32, {}),
    "efficientnet_v2_s": ((3, 224, 224), 32, {}),
    "regnet_x_400mf": ((3, 224, 224), 32, {}),
    "regnet_y_400mf": ((3, 224, 224), 32, {}),
    "convnext_tiny": ((3, 224, 224), 32, {}),
}
SEGMENTATION = {
    "fcn_resnet50": ((3, 224, 224), 32, {"weights_backbone": None}),
    "deeplabv3_resnet50": ((3, 224, 224), 32, {"weights_backbone": None}),
    "deeplabv3_mobilenet_v3_large": ((3, 224, 224), 32, {"weights_backbone": None}),
    "lraspp_mobilenet_v3_large": ((3, 224, 224), 32, {"weights_backbone": None}),
}
VIDEO = {
    "r3d_18": ((3, 16, 112, 112), 16, {}),
    "mc3_18": ((3, 16, 112, 112), 16, {}),
    "r2plus1d_18": ((3, 16, 112, 112), 16, {}),
    # S3D ends in a fixed 2x7x7 average pool: 224x224 is the smallest input it takes
    "s3d": ((3, 16, 224, 224), 16, {}),
}
MODELS = {**CLASSIFICATION, **SEGMENTATION, **VIDEO}

_SKIPPED_MODULES = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def import_torchvision():
    """torchvision, imported without the two modules that need its compiled operators."""
    if "torchvision" not in sys.modules:
        for name in _SKIPPED_MODULES:
            sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision
    import torchvision.models.segmentation   # noqa: F401
    import torchvision.models.video          # noqa: F401
    return torchvision


class _MainOutput:
    """Segmentation models return a dict; the export takes its "out" tensor."""

    def __new__(cls, net):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)["out"]
        return Wrapped()


def build(name: str, seed: int = 0):
    """The model in eval mode, random weights from ``seed`` and random BatchNorm statistics
    (so that folding BatchNorm into convolutions changes the numbers)."""
    import torch
    tv = import_torchvision()
    _, _, kwargs = MODELS[name]
    torch.manual_seed(seed)
    if name in SEGMENTATION:
        net = _MainOutput(getattr(tv.models.segmentation, name)(weights=None, **kwargs))
    elif name in VIDEO:
        net = getattr(tv.models.video, name)(weights=None, **kwargs)
    else:
        net = getattr(tv.models, name)(weights=None, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return net.eval()


def input_shape(name: str, batch: int = 1, side: int | None = None) -> tuple:
    """The model's input shape; ``side`` replaces H and W (a reduced resolution)."""
    shape, _, _ = MODELS[name]
    if side is not None:
        shape = shape[:-2] + (side, side)
    return (batch,) + tuple(shape)


def export(name: str, opset: int = 17, side: int | None = None, seed: int = 0) -> bytes:
    """The model as an ONNX file (bytes), batch axis free."""
    import torch
    net = build(name, seed)
    x = torch.randn(input_shape(name, 1, side))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()
