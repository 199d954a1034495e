"""CIFAR architectures of the robustness literature, with the state-dict key layouts their checkpoints use.

- :class:`ResNet18`: the ResNet-18 of AutoAttack's example (``examples/resnet.py`` of ``pyautoattack``),
  whose ``model_test.pt`` loads strictly; also the layout of most CIFAR ResNet-18 checkpoints
  (kuangliu's ``pytorch-cifar``).
- :class:`PreActResNet18`: pre-activation ResNet-18 (Wong et al. / Rice et al. layout, optional BN before fc;
  ``shortcut_from_input: true`` for RobustBench's ``PreActBlock``, whose projection sees the raw input).
- :class:`WideResNet`: the TRADES / RobustBench ``WideResNet`` layout (``conv1``, ``block1…3``, ``bn1``, ``fc``).
- :class:`DMWideResNet`: DeepMind's layout (``init_conv``, ``layer``, ``batchnorm``, ``logits``, normalising
  ``mean``/``std``, TF "SAME" padding) used by Gowal et al. / Rebuffi et al. WRN-28-10 / 70-16
  checkpoints, usually with Swish (= SiLU) activations.

``activation`` is ``relu`` or ``silu`` (``swish`` is accepted as a synonym: x·sigmoid(x)). ``mean``/``std``
given to :class:`WideResNet` / :class:`PreActResNet18` normalise inside the network as non-persistent
buffers, so checkpoints without them still load strictly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def _activation(name: str) -> Callable[[], nn.Module]:
    try:
        return ACTIVATIONS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"arch.activation={name!r} is not one of {', '.join(ACTIVATIONS)}") from None


class _InputNorm(nn.Module):
    """``(x − mean) / std`` with non-persistent buffers (identity when no mean/std is given)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, persistent: bool = False) -> None:
        super().__init__()
        self.active = mean is not None or std is not None
        m = torch.tensor(list(mean if mean is not None else (0.0, 0.0, 0.0)), dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(list(std if std is not None else (1.0, 1.0, 1.0)), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", m, persistent=persistent)
        self.register_buffer("std", s, persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.active else x


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 (3×3 stem, no max-pool, 4×4 average pool): AutoAttack's example architecture."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        planes, layers = 64, []
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(_BasicBlock(planes, width, stride), _BasicBlock(width, width, 1)))
            planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.flatten(1))


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, act: Callable[[], nn.Module],
                 shortcut_from_input: bool = False) -> None:
        super().__init__()
        self.shortcut_from_input = shortcut_from_input
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.act1, self.act2 = act(), act()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = self.shortcut(x if self.shortcut_from_input else out) if hasattr(self, "shortcut") else x
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 (keys ``conv1``, ``layerN.i.{bn1,conv1,bn2,conv2,shortcut.0}``, ``linear``)."""

    def __init__(self, num_classes: int = 10, activation: str = "relu", bn_before_fc: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 shortcut_from_input: bool = False) -> None:
        super().__init__()
        act = _activation(activation)
        block = functools.partial(_PreActBlock, act=act, shortcut_from_input=shortcut_from_input)
        self.normalize = _InputNorm(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        planes, layers = 64, []
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(block(planes, width, stride), block(width, width, 1)))
            planes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn_before_fc = bn_before_fc
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(512)
            self.act = act()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_before_fc:
            out = self.act(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"arch.depth={depth!r}: a WideResNet's depth is 6·n + 4 (16, 22, 28, 34, 70, …)")
    return (depth - 4) // 6


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(in_planes), act()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(out_planes), act()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (  # camelCase: the checkpoints' key name
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.convShortcut is None else self.convShortcut(pre))


class _NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            _WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act)
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-``depth``-``widen_factor`` in the TRADES / RobustBench key layout.

    ``sub_block1: true`` adds the unused ``sub_block1`` that TRADES-era checkpoints (e.g. Zhang 2019) hold.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, activation: str = "relu",
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 bias_last: bool = True, sub_block1: bool = False) -> None:
        super().__init__()
        n, act = _check_depth(depth), _activation(activation)
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = _InputNorm(mean, std)
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, ch[0], ch[1], 1, act)
        if sub_block1:  # TRADES' checkpoints carry this never-used block; it exists only so they load strictly
            self.sub_block1 = _NetworkBlock(n, ch[0], ch[1], 1, act)
        self.block2 = _NetworkBlock(n, ch[1], ch[2], 2, act)
        self.block3 = _NetworkBlock(n, ch[2], ch[3], 2, act)
        self.bn1, self.relu = nn.BatchNorm2d(ch[3]), act()
        self.fc = nn.Linear(ch[3], num_classes, bias=bias_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _DMBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.batchnorm_0, self.relu_0 = nn.BatchNorm2d(in_planes), act()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1, self.relu_1 = nn.BatchNorm2d(out_planes), act()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if self.has_shortcut else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        # TF "SAME" padding: symmetric for stride 1, bottom/right only for stride 2
        v = F.pad(pre, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class _DMGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.block = nn.Sequential(*[
            _DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act) for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WideResNet in DeepMind's key layout, normalising inside with (non-persistent) ``mean``/``std``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, activation: str = "silu",
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 padding: int = 0) -> None:
        super().__init__()
        n, act = _check_depth(depth), _activation(activation)
        ch = [16, 16 * width, 32 * width, 64 * width]
        # non-persistent, as in RobustBench: the released checkpoints hold no mean/std entries
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.padding = padding
        self.init_conv = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(_DMGroup(n, ch[0], ch[1], 1, act), _DMGroup(n, ch[1], ch[2], 2, act),
                                   _DMGroup(n, ch[2], ch[3], 2, act))
        self.batchnorm, self.relu = nn.BatchNorm2d(ch[3]), act()
        self.logits = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))
