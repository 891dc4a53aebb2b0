"""The PyTorch reference for ``python -m recipes.bench --reference torch``: kcnn's ResNets written in PyTorch.

Only the benchmark imports this module (PyTorch is the ``[bench]`` extra, never a kcnn dependency). The nets
mirror kcnn's builders layer for layer, so both sides do the same arithmetic (the bench checks the parameter
counts agree):

* CIFAR ResNet-20/32/44/56/110: 3x3 stem, three stages of 16/32/64 filters, basic blocks, shortcut option A
  (subsample by the stride, zero-pad the new channels), bias-free convs + batch norm.
* ResNet-18/34: torchvision's parameterisation (bias-free convs + batch norm, 7x7 stem, 3x3 max pool).
* ResNet-50/101/152: keras.applications' v1 (conv biases before batch norm, stride on the first 1x1).

Timing is eager PyTorch in channels-last memory format: ``zero_grad -> forward -> cross-entropy -> backward ->
SGD(momentum=0.9) step`` per training step, ``inference_mode`` + ``eval()`` for inference.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

#: kcnn name -> ("cifar", blocks per stage) | ("basic" | "bottleneck", blocks per stage).
ARCHS = {
    **{f"resnet{d}": ("cifar", (d - 2) // 6) for d in (20, 32, 44, 56, 110)},
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
BN_EPSILON = 1.001e-5  # kcnn.layers.BN_EPSILON
BN_MOMENTUM = 0.1      # PyTorch's convention for kcnn's 0.9


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """Two 3x3 convs; shortcut "A" (CIFAR) or a 1x1 projection (ResNet-18/34) when the shape changes."""

    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.stride, self.missing, self.proj = stride, cout - cin, None
        if (stride != 1 or cin != cout) and shortcut == "B":
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x):
        if self.proj is not None:
            short = self.proj(x)
        else:
            short = x[:, :, ::self.stride, ::self.stride] if self.stride != 1 else x
            if self.missing:
                short = F.pad(short, (0, 0, 0, 0, 0, self.missing))
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(short + self.bn2(self.conv2(y)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4), stride on the first 1x1, biased convs (keras.applications' ResNet v1)."""

    def __init__(self, cin, filters, stride, projection):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, filters, 1, stride), _bn(filters)
        self.conv2, self.bn2 = nn.Conv2d(filters, filters, 3, 1, 1), _bn(filters)
        self.conv3, self.bn3 = nn.Conv2d(filters, 4 * filters, 1), _bn(4 * filters)
        self.proj = None
        if projection:
            self.proj = nn.Sequential(nn.Conv2d(cin, 4 * filters, 1, stride), _bn(4 * filters))

    def forward(self, x):
        short = self.proj(x) if self.proj is not None else x
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(short + self.bn3(self.conv3(y)))


class ResNet(nn.Module):
    def __init__(self, arch: str, classes: int):
        super().__init__()
        kind, depths = ARCHS[arch]
        blocks = []
        if kind == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), _bn(16), nn.ReLU())
            cin = 16
            for stage, filters in enumerate((16, 32, 64)):
                for b in range(depths):
                    stride = 2 if (b == 0 and stage > 0) else 1
                    blocks.append(BasicBlock(cin, filters, stride, "A"))
                    cin = filters
        else:
            bias = kind == "bottleneck"
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=bias), _bn(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            cin = 64
            for stage, (count, filters) in enumerate(zip(depths, (64, 128, 256, 512))):
                for b in range(count):
                    stride = 2 if (b == 0 and stage > 0) else 1
                    if kind == "basic":
                        blocks.append(BasicBlock(cin, filters, stride, "B"))
                        cin = filters
                    else:
                        blocks.append(Bottleneck(cin, filters, stride, projection=b == 0))
                        cin = 4 * filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(arch: str, classes: int = 10) -> nn.Module:
    """The PyTorch twin of ``kcnn.build(arch, classes=classes)`` (logits out; the loss applies softmax)."""
    if arch not in ARCHS:
        raise ValueError(f"No PyTorch reference for {arch!r}; --reference torch supports {', '.join(ARCHS)}. "
                         f"Received: model={arch!r}")
    return ResNet(arch, classes)


def count_params(module: nn.Module) -> int:
    """Trainable parameters plus batch-norm running statistics (what Keras' ``count_params`` counts)."""
    buffers = sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    return sum(p.numel() for p in module.parameters()) + buffers


class Reference:
    """Times one PyTorch model on one fixed in-memory batch (channels-last), epoch by epoch."""

    def __init__(self, arch: str, batch_size: int, image_size: int, classes: int = 10, lr: float = 0.01,
                 seed: int = 0):
        torch.manual_seed(seed)
        self.model = build(arch, classes).to(memory_format=torch.channels_last)
        self.x = torch.rand(batch_size, 3, image_size, image_size)
        self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, classes, (batch_size,))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.loss = nn.CrossEntropyLoss()

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def train_epoch(self, steps: int) -> float:
        """Seconds for ``steps`` training steps."""
        self.model.train()
        started = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(self.x), self.y)
            loss.backward()
            self.optimizer.step()
        float(loss)
        return time.perf_counter() - started

    def infer_epoch(self, steps: int) -> float:
        """Seconds for ``steps`` forward passes in eval mode."""
        self.model.eval()
        started = time.perf_counter()
        with torch.inference_mode():
            for _ in range(steps):
                out = self.model(self.x)
            float(out[0, 0])
        return time.perf_counter() - started
