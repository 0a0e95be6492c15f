"""The zoo's network architectures, written in PyTorch as sequences of stages.

This module owns the layer-by-layer definition of every model the zoo builds: MobileNetV1 and V2,
Inception V4, SSD-MobileNetV1/V2 and cnn-trad-fpool3 as published, and the two small digits
classifiers trained here. They are written by hand rather than taken from torchvision or timm
because PyPI's torchvision does not import beside the CPU torch wheel used here and timm needs
torchvision; the definitions follow torchvision's ``mobilenet_v2``, timm's ``inception_v4`` and
the TensorFlow object-detection API's SSD configs, and their parameter counts match the published
ones (checked in tests). Every model is an ``nn.Sequential`` of named *stages* whose only
hand-over is one tensor: a split point is a boundary between two stages, so the head (stages
``[:k]``) and tail (stages ``[k:]``) are themselves ``nn.Sequential`` models that compose to the
whole. Untrained weights are the PyTorch default initialisation under a fixed seed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "cnn_trad_fpool3",
    "digits_compact",
    "digits_full",
    "inception_v4",
    "mobilenet_v2",
    "ssd_mobilenet_v1",
    "ssd_mobilenet_v2",
]

SSD_CLASSES = 91  # COCO's 90 classes plus background, as the TF object-detection API exports them
SSD_BOX_CODE = 4


def _conv_bn(
    cin: int,
    cout: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int | tuple[int, int] | None = None,
    *,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU6,
    eps: float = 1e-5,
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + activation: the unit all these networks are made of."""
    if padding is None:
        padding = (kernel - 1) // 2 if isinstance(kernel, int) else ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=eps),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection, skip when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=None)]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x)
        return x + y if self.use_skip else y


# (expansion t, output channels c, repeats n, first stride s), torchvision's table
_MBV2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _mbv2_blocks() -> list[InvertedResidual]:
    blocks, cin = [], 32
    for t, c, n, s in _MBV2_SETTINGS:
        for i in range(n):
            blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    return blocks


class Classifier(nn.Module):
    """Global average pool, dropout (identity at inference) and the final linear layer: logits."""

    def __init__(self, features: int, classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
        return logits


def _init_mobilenet(model: nn.Module) -> nn.Module:
    """torchvision's MobileNet initialisation (kaiming fan-out convs, N(0, 0.01) linear)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def mobilenet_v2(classes: int = 1000) -> nn.Sequential:
    """MobileNetV2 1.0 at 224x224 (Sandler et al. 2018), as torchvision defines it: 3,504,872 parameters.

    Stages: ``stem``, ``block1``..``block17``, ``conv_last`` (1x1 to 1280) and ``classifier``.
    Output: logits ``[1, classes]``.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=_conv_bn(3, 32, 3, 2))
    for i, block in enumerate(_mbv2_blocks(), start=1):
        stages[f"block{i}"] = block
    stages["conv_last"] = _conv_bn(320, 1280, 1)
    stages["classifier"] = Classifier(1280, classes)
    return _init_mobilenet(nn.Sequential(stages))  # type: ignore[return-value]


# --- Inception V4 (Szegedy et al. 2016), following timm's inception_v4 (BatchNorm eps 1e-3, ReLU) ---


def _cbr(
    cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
) -> nn.Sequential:
    return _conv_bn(cin, cout, kernel, stride, padding, act=nn.ReLU, eps=1e-3)


class _Branches(nn.Module):
    """Runs parallel branches on one input and concatenates them along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


def _avg_branch(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), _cbr(cin, cout, 1))


def _inception_a() -> _Branches:
    return _Branches(
        _cbr(384, 96, 1),
        nn.Sequential(_cbr(384, 64, 1), _cbr(64, 96, 3, padding=1)),
        nn.Sequential(_cbr(384, 64, 1), _cbr(64, 96, 3, padding=1), _cbr(96, 96, 3, padding=1)),
        _avg_branch(384, 96),
    )


def _reduction_a() -> _Branches:
    return _Branches(
        _cbr(384, 384, 3, 2),
        nn.Sequential(_cbr(384, 192, 1), _cbr(192, 224, 3, padding=1), _cbr(224, 256, 3, 2)),
        nn.MaxPool2d(3, 2),
    )


def _inception_b() -> _Branches:
    return _Branches(
        _cbr(1024, 384, 1),
        nn.Sequential(
            _cbr(1024, 192, 1), _cbr(192, 224, (1, 7), padding=(0, 3)), _cbr(224, 256, (7, 1), padding=(3, 0))
        ),
        nn.Sequential(
            _cbr(1024, 192, 1),
            _cbr(192, 192, (7, 1), padding=(3, 0)),
            _cbr(192, 224, (1, 7), padding=(0, 3)),
            _cbr(224, 224, (7, 1), padding=(3, 0)),
            _cbr(224, 256, (1, 7), padding=(0, 3)),
        ),
        _avg_branch(1024, 128),
    )


def _reduction_b() -> _Branches:
    return _Branches(
        nn.Sequential(_cbr(1024, 192, 1), _cbr(192, 192, 3, 2)),
        nn.Sequential(
            _cbr(1024, 256, 1),
            _cbr(256, 256, (1, 7), padding=(0, 3)),
            _cbr(256, 320, (7, 1), padding=(3, 0)),
            _cbr(320, 320, 3, 2),
        ),
        nn.MaxPool2d(3, 2),
    )


class _InceptionC(nn.Module):
    """Inception-C: two of its branches fork again into 1x3 and 3x1 convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _cbr(1536, 256, 1)
        self.branch1_0 = _cbr(1536, 384, 1)
        self.branch1_1a = _cbr(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = _cbr(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = _cbr(1536, 384, 1)
        self.branch2_1 = _cbr(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = _cbr(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = _cbr(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = _cbr(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = _avg_branch(1536, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat(
            (
                self.branch0(x),
                self.branch1_1a(x1),
                self.branch1_1b(x1),
                self.branch2_3a(x2),
                self.branch2_3b(x2),
                self.branch3(x),
            ),
            1,
        )


def inception_v4(classes: int = 1000) -> nn.Sequential:
    """Inception V4 at 299x299, as timm defines it: 42,679,816 parameters.

    Stages: ``stem1``..``stem3``, ``mixed3a``, ``mixed4a``, ``mixed5a``, ``inception_a1``..``a4``,
    ``reduction_a``, ``inception_b1``..``b7``, ``reduction_b``, ``inception_c1``..``c3``,
    ``classifier``. Output: logits ``[1, classes]``.
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem1=_cbr(3, 32, 3, 2),
        stem2=_cbr(32, 32, 3),
        stem3=_cbr(32, 64, 3, padding=1),
        mixed3a=_Branches(nn.MaxPool2d(3, 2), _cbr(64, 96, 3, 2)),
        mixed4a=_Branches(
            nn.Sequential(_cbr(160, 64, 1), _cbr(64, 96, 3)),
            nn.Sequential(
                _cbr(160, 64, 1),
                _cbr(64, 64, (1, 7), padding=(0, 3)),
                _cbr(64, 64, (7, 1), padding=(3, 0)),
                _cbr(64, 96, 3),
            ),
        ),
        mixed5a=_Branches(_cbr(192, 192, 3, 2), nn.MaxPool2d(3, 2)),
    )
    for i in range(1, 5):
        stages[f"inception_a{i}"] = _inception_a()
    stages["reduction_a"] = _reduction_a()
    for i in range(1, 8):
        stages[f"inception_b{i}"] = _inception_b()
    stages["reduction_b"] = _reduction_b()
    for i in range(1, 4):
        stages[f"inception_c{i}"] = _InceptionC()
    stages["classifier"] = Classifier(1536, classes, dropout=0.0)
    return nn.Sequential(stages)


# --- SSD (Liu et al. 2016) on MobileNets, as the TF object-detection API's ssd_mobilenet_v{1,2}_coco ---


def _extra(cin: int, cout: int) -> nn.Sequential:
    """An SSD extra feature layer: 1x1 to half the depth, then 3x3 stride 2 (TF: depths 512, 256, 256, 128)."""
    return nn.Sequential(_conv_bn(cin, cout // 2, 1), _conv_bn(cout // 2, cout, 3, 2))


class SSDTail(nn.Module):
    """The part of an SSD after its first feature map: the rest of the backbone, the extra layers and
    the box predictors. Takes the first feature map, returns raw ``(boxes [1, A, 4], scores [1, A, 91])``
    before anchor decoding and non-maximum suppression."""

    def __init__(self, rest: nn.Module, first_depth: int, last_depth: int) -> None:
        super().__init__()
        self.rest = rest
        self.extras = nn.ModuleList([_extra(last_depth, 512), _extra(512, 256), _extra(256, 256), _extra(256, 128)])
        depths = (first_depth, last_depth, 512, 256, 256, 128)
        anchors = (3, 6, 6, 6, 6, 6)  # TF: 3 anchors on the first map (reduce_boxes_in_lowest_layer), 6 on the rest
        # 1x1 box predictors, as in ssd_mobilenet_v{1,2}_coco.config (kernel_size 1, no extra layers)
        self.box = nn.ModuleList([nn.Conv2d(d, a * SSD_BOX_CODE, 1) for d, a in zip(depths, anchors, strict=True)])
        self.cls = nn.ModuleList([nn.Conv2d(d, a * SSD_CLASSES, 1) for d, a in zip(depths, anchors, strict=True)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = [x, self.rest(x)]
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        boxes = [b(m).permute(0, 2, 3, 1).reshape(1, -1, SSD_BOX_CODE) for b, m in zip(self.box, maps, strict=True)]
        scores = [c(m).permute(0, 2, 3, 1).reshape(1, -1, SSD_CLASSES) for c, m in zip(self.cls, maps, strict=True)]
        return torch.cat(boxes, 1), torch.cat(scores, 1)


def ssd_mobilenet_v2() -> nn.Sequential:
    """SSD-MobileNetV2 at 300x300: 1917 anchors (19x19x3 + 10x10x6 + 5x5x6 + 3x3x6 + 2x2x6 + 1x1x6).

    The first feature map is block 14's expansion output (TF's ``layer_15/expansion_output``,
    19x19x576), the second the 1x1 conv to 1280. Stages: ``stem``, ``block1``..``block13``,
    ``block14_expand``, ``detect`` (an :class:`SSDTail`).
    """
    blocks = _mbv2_blocks()
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=_conv_bn(3, 32, 3, 2))
    for i, block in enumerate(blocks[:13], start=1):
        stages[f"block{i}"] = block
    expand, depthwise, project = blocks[13].conv
    stages["block14_expand"] = expand
    rest = nn.Sequential(depthwise, project, *blocks[14:], _conv_bn(320, 1280, 1))
    stages["detect"] = SSDTail(rest, 576, 1280)
    return _init_mobilenet(nn.Sequential(stages))  # type: ignore[return-value]


def _mbv1_layers() -> list[nn.Sequential]:
    """MobileNetV1 1.0 (Howard et al. 2017): the 13 depthwise-separable layers after the stem."""
    plan = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))
    layers, cin = [], 32
    for cout, stride in plan:
        layers.append(nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1)))
        cin = cout
    return layers


def ssd_mobilenet_v1() -> nn.Sequential:
    """SSD-MobileNetV1 at 300x300: 1917 anchors; feature maps at conv11 (19x19x512) and conv13 (10x10x1024).

    Stages: ``stem``, ``conv1``..``conv11``, ``detect`` (an :class:`SSDTail`).
    """
    layers = _mbv1_layers()
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=_conv_bn(3, 32, 3, 2))
    for i, layer in enumerate(layers[:11], start=1):
        stages[f"conv{i}"] = layer
    stages["detect"] = SSDTail(nn.Sequential(*layers[11:]), 512, 1024)
    return _init_mobilenet(nn.Sequential(stages))  # type: ignore[return-value]


# --- Keyword spotting: cnn-trad-fpool3 (Sainath & Parada, Interspeech 2015, table 1) ---


class _Dense(nn.Module):
    """Flatten, then the low-rank linear layer (32, no activation), the DNN layer (128, ReLU) and the
    softmax output layer."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.low_rank = nn.Linear(features, 32)
        self.dnn = nn.Linear(32, 128)
        self.relu = nn.ReLU()
        self.out = nn.Linear(128, classes)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs: torch.Tensor = self.softmax(self.out(self.relu(self.dnn(self.low_rank(torch.flatten(x, 1))))))
        return probs


def cnn_trad_fpool3(classes: int = 12) -> nn.Sequential:
    """cnn-trad-fpool3: input 98 frames x 40 MFCC (``[1, 1, 98, 40]``); conv 64@20x8 (time x frequency),
    max-pool 1x3 in frequency, conv 64@10x4, linear 32, dense 128, softmax ``classes`` (1,326,892
    parameters for 12 classes). Stages: ``conv1`` (with the pool), ``conv2``, ``dense``.
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Sequential(nn.Conv2d(1, 64, (20, 8)), nn.ReLU(), nn.MaxPool2d((1, 3))),
            conv2=nn.Sequential(nn.Conv2d(64, 64, (10, 4)), nn.ReLU()),
            dense=_Dense(64 * 70 * 8, classes),
        )
    )


# --- The compression cascade's pair, trained here on scikit-learn's 8x8 digits ---


def _digits_cnn(widths: Sequence[int], hidden: int) -> nn.Sequential:
    """Small CNN on ``[1, 1, 8, 8]`` digits: 3x3 convs (ReLU) with 2x2 max-pools between, then a
    hidden dense layer and 10 logits."""
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    cin, size = 1, 8
    for i, width in enumerate(widths, start=1):
        stages[f"conv{i}"] = nn.Sequential(
            nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)
        )
        cin, size = width, size // 2
    stages["head"] = nn.Sequential(nn.Flatten(), nn.Linear(cin * size * size, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return nn.Sequential(stages)


def digits_compact() -> nn.Sequential:
    """The edge model of the compression cascade: one 8-channel conv, 16 hidden units (about 2.3 K
    parameters)."""
    return _digits_cnn((8,), 16)


def digits_full() -> nn.Sequential:
    """The cloud model of the compression cascade: convs of 32 and 64 channels, 128 hidden units
    (about 53 K parameters)."""
    return _digits_cnn((32, 64), 128)


ARCHITECTURES: dict[str, Callable[[], nn.Sequential]] = {
    "mobilenet_v2": mobilenet_v2,
    "inception_v4": inception_v4,
    "ssd_mobilenet_v1": ssd_mobilenet_v1,
    "ssd_mobilenet_v2": ssd_mobilenet_v2,
    "cnn_trad_fpool3": cnn_trad_fpool3,
    "digits_compact": digits_compact,
    "digits_full": digits_full,
}
