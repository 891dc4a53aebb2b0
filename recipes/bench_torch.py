"""The PyTorch reference for ``python -m recipes.bench --reference torch``: kcnn's nets written in PyTorch.

Only the benchmark imports this module (PyTorch is the ``[bench]`` extra, never a kcnn dependency). The
nets mirror what the bench times on the kcnn side (``classifier(backbone(MODEL))``: the headless net, global
average pooling, one dense layer) layer for layer, so both sides do the same arithmetic (the bench checks the
parameter counts agree). torchvision is not used:

* CIFAR ResNet-20/32/44/56/110: 3x3 stem, three stages of 16/32/64 filters, basic blocks, shortcut option A
  (subsample by the stride, zero-pad the new channels), bias-free convs + batch norm.
* ResNet-18/34: torchvision's parameterisation (bias-free convs + batch norm, 7x7 stem, 3x3 max pool).
* ResNet-50/101/152: keras.applications' v1 (conv biases before batch norm, stride on the first 1x1).
* VGG11/13/16/19: 3x3 convs with biases and ReLU, a 2x2 max pool after each of the five blocks.

Timing is eager PyTorch in channels-last memory format: ``zero_grad -> forward -> cross-entropy -> backward ->
SGD(momentum=0.9) step`` per training step, ``inference_mode`` + ``eval()`` for inference. ``train="head"`` is
the frozen-backbone phase: the backbone runs in eval mode without autograd and only the last layer learns.
On a GPU, ``amp`` runs the step under ``torch.autocast`` (float16 with a ``GradScaler``, or bfloat16).

As a program it is the PyTorch worker of the bench's fair mode (one library per process)::

    python -m recipes.bench_torch --model resnet50 --image-size 224 --batch-size 32 --steps 8 --json
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field

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
    "vgg11": ("vgg", (1, 1, 2, 2, 2)),
    "vgg13": ("vgg", (2, 2, 2, 2, 2)),
    "vgg16": ("vgg", (2, 2, 3, 3, 3)),
    "vgg19": ("vgg", (2, 2, 4, 4, 4)),
}
#: keras.applications names the bench accepts, and the twin each maps to.
ALIASES = {"ResNet50": "resnet50", "ResNet101": "resnet101", "ResNet152": "resnet152", "VGG16": "vgg16",
           "VGG19": "vgg19"}
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
        return self.fc(self.embed(x))

    def embed(self, x):
        """The backbone's pooled features (what the frozen-backbone phase feeds the last layer)."""
        return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


class VGG(nn.Module):
    """VGG's convolutional blocks (biased 3x3 convs, ReLU, 2x2 max pool), then global average pool, dense."""

    def __init__(self, arch: str, classes: int):
        super().__init__()
        convs = []
        cin = 3
        for count, width in zip(ARCHS[arch][1], (64, 128, 256, 512, 512)):
            for _ in range(count):
                convs += [nn.Conv2d(cin, width, 3, 1, 1), nn.ReLU(inplace=True)]
                cin = width
            convs.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*convs)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.embed(x))

    def embed(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


def twin_name(arch: str) -> str | None:
    """The `ARCHS` key of the twin of a kcnn or keras.applications name, or None when there is none."""
    arch = ALIASES.get(arch, arch)
    return arch if arch in ARCHS else None


def build(arch: str, classes: int = 10) -> nn.Module:
    """The PyTorch twin of ``classifier(backbone(arch), classes)`` (logits out; the loss applies softmax)."""
    name = twin_name(arch)
    if name is None:
        raise ValueError(f"No PyTorch reference for {arch!r}; --reference torch supports "
                         f"{', '.join([*ARCHS, *ALIASES])}. Received: model={arch!r}")
    return VGG(name, classes) if ARCHS[name][0] == "vgg" else ResNet(name, classes)


def count_params(module: nn.Module) -> int:
    """Trainable parameters plus batch-norm running statistics (what Keras' ``count_params`` counts)."""
    buffers = sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    return sum(p.numel() for p in module.parameters()) + buffers


def resolve_device(device: str = "auto") -> str:
    """"cuda" when asked for, or for "auto" when PyTorch sees a GPU; else "cpu"."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"`device` must be auto, cpu or cuda. Received: device={device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but PyTorch sees no GPU (torch.cuda.is_available() is False; "
                         f"torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    return device


def resolve_amp(amp: str, device: str) -> str:
    """"none", "float16" or "bfloat16"; "auto" is kcnn's rule: float16 on a GPU, none on a CPU."""
    if amp not in ("auto", "none", "float16", "bfloat16"):
        raise ValueError(f"`amp` must be auto, none, float16 or bfloat16. Received: amp={amp!r}")
    return ("float16" if device == "cuda" else "none") if amp == "auto" else amp


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Reference:
    """Times one PyTorch model on one fixed in-memory batch (channels-last), epoch by epoch.

    Args:
        arch: A name `build` knows.
        batch_size, image_size, classes: The batch, its side in pixels, the classes.
        lr: SGD's learning rate (momentum 0.9).
        seed: Seed of the weights and the batch.
        device: "auto" (a GPU when PyTorch sees one), "cpu" or "cuda".
        amp: "none", "float16" or "bfloat16": the training and inference steps under ``torch.autocast``
            (float16 with a ``GradScaler``); "auto": float16 on a GPU, none on a CPU.
        train: "all" (every layer learns, batch norm in training mode) or "head" (frozen backbone in eval
            mode, run without autograd; only the last layer learns).
    """

    def __init__(self, arch: str, batch_size: int, image_size: int, classes: int = 10, lr: float = 0.01,
                 seed: int = 0, device: str = "cpu", amp: str = "none", train: str = "all"):
        if train not in ("all", "head"):
            raise ValueError(f"`train` must be all or head. Received: train={train!r}")
        self.device = resolve_device(device)
        self.amp = resolve_amp(amp, self.device)
        self.train = train
        if self.device == "cuda":
            torch.backends.cudnn.benchmark = True  # autotuned convolutions, as TensorFlow's cuDNN path does
        torch.manual_seed(seed)
        self.model = build(arch, classes).to(self.device, memory_format=torch.channels_last)
        self.x = torch.rand(batch_size, 3, image_size, image_size, device=self.device)
        self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, classes, (batch_size,), device=self.device)
        if train == "head":
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in self.model.fc.parameters():
                p.requires_grad_(True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
        self.loss = nn.CrossEntropyLoss()
        self.scaler = torch.amp.GradScaler(self.device, enabled=self.amp == "float16")

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def _autocast(self):
        dtype = torch.bfloat16 if self.amp == "bfloat16" else torch.float16
        return torch.autocast(self.device, dtype=dtype, enabled=self.amp != "none")

    def _logits(self):
        if self.train == "all":
            return self.model(self.x)
        with torch.no_grad():
            features = self.model.embed(self.x)
        return self.model.fc(features)

    def train_epoch(self, steps: int) -> float:
        """Seconds for ``steps`` training steps."""
        self.model.train(self.train == "all")
        _sync(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss(self._logits(), self.y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        float(loss.detach())
        _sync(self.device)
        return time.perf_counter() - started

    def infer_epoch(self, steps: int) -> float:
        """Seconds for ``steps`` forward passes in eval mode."""
        self.model.eval()
        _sync(self.device)
        started = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            for _ in range(steps):
                out = self.model(self.x)
            float(out[0, 0])
        _sync(self.device)
        return time.perf_counter() - started


def count_macs(module: nn.Module, image_size: int) -> int:
    """Multiply-accumulates of one image's forward pass through the convolutions and linear layers.

    The convention of `kcnn.count_macs`: a convolution costs ``output elements x (in channels / groups) x
    kernel area``, a linear layer ``in x out``; biases, batch norm, pooling and activations are not counted.
    """
    total = [0]

    def conv_hook(layer, inputs, output):
        kernel = layer.kernel_size[0] * layer.kernel_size[1]
        total[0] += output[0].numel() * (layer.in_channels // layer.groups) * kernel

    def linear_hook(layer, inputs, output):
        total[0] += layer.in_features * layer.out_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = next(module.parameters()).device
    training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        module.train(training)
        for hook in hooks:
            hook.remove()
    return total[0]


def matmul_peak_gflops(size: int = 4096, repeats: int = 5, dtype: str = "float32",
                       device: str = "cpu") -> float:
    """Matmul throughput through PyTorch: the best of ``repeats`` timed ``size``-square products (GFLOP/s)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, getattr(torch, dtype))
    b = torch.randn(size, size, generator=generator).to(device, getattr(torch, dtype))
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        _sync(device)
        started = time.perf_counter()
        (a @ b)[0, 0].item()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


# ------------------------------------------------------------------------------------------------------------
# The worker: ``python -m recipes.bench_torch``
# ------------------------------------------------------------------------------------------------------------


@dataclass
class TorchConfig:
    model: str = field(default="resnet20", metadata={"help": "a twin name (resnet20, resnet50, vgg16, ...)"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    image_size: int = field(default=32, metadata={"help": "side in pixels"})
    classes: int = field(default=10, metadata={"help": "output classes"})
    steps: int = field(default=64, metadata={"help": "training steps per timed epoch"})
    epochs: int = field(default=3, metadata={"help": "timed epochs after one untimed warm-up epoch"})
    train: str = field(default="all", metadata={"help": "all | head (frozen backbone)",
                                                 "choices": ["all", "head"]})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda",
                                                   "choices": ["auto", "cpu", "cuda"]})
    amp: str = field(default="auto", metadata={"help": "auto (float16 on a GPU) | none | float16 | bfloat16",
                                               "choices": ["auto", "none", "float16", "bfloat16"]})
    peak_size: int = field(default=4096, metadata={"help": "side of the matmul measuring the peak (0: skip)"})
    json: bool = field(default=False, metadata={"help": "print one JSON object as the last line"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def run(cfg: TorchConfig) -> int:
    for name in ("batch_size", "image_size", "classes", "steps", "epochs"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(cfg, name)}")
    reference = Reference(cfg.model, cfg.batch_size, cfg.image_size, cfg.classes, seed=cfg.seed,
                          device=cfg.device, amp=cfg.amp, train=cfg.train)
    device, amp = reference.device, reference.amp
    peak_dtype = "float32" if amp == "none" else amp
    peak = matmul_peak_gflops(cfg.peak_size, dtype=peak_dtype, device=device) if cfg.peak_size else None
    images = cfg.batch_size * cfg.steps
    train = [images / reference.train_epoch(cfg.steps) for _ in range(cfg.epochs + 1)][1:]
    infer = [images / reference.infer_epoch(cfg.steps) for _ in range(cfg.epochs + 1)][1:]
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    result = dict(library="torch", model=cfg.model, batch_size=cfg.batch_size, image_size=cfg.image_size,
                  steps=cfg.steps, epochs=cfg.epochs, train=cfg.train, device=device, gpu=gpu, amp=amp,
                  version=torch.__version__, cuda=torch.version.cuda, threads=reference.threads,
                  params=count_params(reference.model),
                  macs_per_image=count_macs(reference.model, cfg.image_size),
                  images_per_sec_epochs=[round(r, 1) for r in train],
                  inference_images_per_sec_repeats=[round(r, 1) for r in infer],
                  peak_gflops=None if peak is None else round(peak, 1), peak_dtype=peak_dtype)
    print(f"torch {torch.__version__} {cfg.model} train={cfg.train}, batch {cfg.batch_size}, "
          f"{cfg.image_size} px, {device}{' (' + gpu + ')' if gpu else ''}, amp {amp}: training "
          f"{statistics.median(train):,.1f} img/s (median of {len(train)}), inference "
          f"{statistics.median(infer):,.1f} img/s", flush=True)
    if cfg.json:
        print(json.dumps(result), flush=True)
    return 0


def main(argv=None) -> int:
    from recipes import _cli

    return _cli.run(run, TorchConfig, argv, prog="python -m recipes.bench_torch", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
