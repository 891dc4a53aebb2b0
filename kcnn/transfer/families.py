"""The keras.applications families: one `Family` entry each, the only place their facts are written down.

A family is a keras.applications module (``resnet_v2``, ``efficientnet``, ...) and the models it defines. Its
entry says what kcnn needs to fine-tune any of them: the smallest input side keras accepts, each model's native
side (the one its ImageNet weights saw), the preprocessing mode of its ``preprocess_input`` and how its layers
group into blocks. The modules that need these facts read them from `FAMILIES`:

* ``kcnn.transfer.names``: `min_size` (``min_size_of``, the input-shape check);
* ``kcnn.transfer.preprocessing``: `Family.preprocessing` (``preprocessing_mode``);
* ``kcnn.transfer.blocks``: `Family.block_rules`, `Family.unit_pattern`, `Family.unit_closer`
  (``group_blocks``);
* ``kcnn.checks``: `native_size` (the ``image size`` check, ``native_size`` / ``native_size_of``).

Adding a family is one `Family` in `FAMILIES`; tests/test_transfer.py parametrizes over the table (its
preprocessing against keras' ``preprocess_input``, its minimum and native sizes against keras' own checks, its
block rules), so the new entry is tested without a test edit.

Block rules, two kinds (a family has one):

* named: ``block_rules``, ``(regex, replacement)`` pairs tried in order on each layer name; the first that
  matches names the layer's block (``re.Match.expand(replacement)``); a layer no rule matches joins the block
  of the layer before it (layers before the first match join the first block). A replacement ``"+stage\\1"``
  means "the stage after \\1" (ConvNeXt's ``downsampling_block_k`` opens stage k + 1).
* staged: blocks are ``stage1, stage2, ...``, split where the feature map shrinks. Layers first form units:
  consecutive layers with the same ``unit_pattern`` match (group 1 if the pattern has a group, else the whole
  match), and a unit also ends after a layer matching ``unit_closer``; a unit is never split between stages.
  With neither, every layer is its own unit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import keras

__all__ = ["DEFAULT_MIN_SIZE", "DEFAULT_NATIVE_SIZE", "FAMILIES", "Family", "family_of", "get_family", "min_size",
           "native_size"]

#: Smallest input side of a keras.applications model no family lists (keras' usual minimum).
DEFAULT_MIN_SIZE = 32
#: Native input side of a keras.applications model no family lists.
DEFAULT_NATIVE_SIZE = 224


@dataclass(frozen=True)
class Family:
    """One keras.applications family: what kcnn needs to know to fine-tune its models.

    Attributes:
        name: The keras.applications module ("vgg16", "resnet_v2", "efficientnet", ...).
        models: Model name -> native input side (what its ImageNet weights saw), smallest model first (the
            tests build the first one).
        preprocessing: The mode of the module's ``preprocess_input``: a key of
            `kcnn.transfer.PREPROCESSING` ("caffe", "tf", "torch", "unit" or "none").
        min_size: Smallest input side keras.applications accepts for these models.
        block_rules: Named blocks: ``(regex, replacement)`` pairs on layer names (see the module docstring).
        unit_pattern: Staged blocks: regex whose match (group 1 if any) keeps consecutive layers in one unit.
        unit_closer: Staged blocks: regex of the layer name that ends a unit.
    """

    name: str
    models: Mapping[str, int] = field(hash=False)
    preprocessing: str
    min_size: int = DEFAULT_MIN_SIZE
    block_rules: tuple = ()
    unit_pattern: str | None = None
    unit_closer: str | None = None

    def __post_init__(self):
        models = dict(self.models)
        if not models or not all(isinstance(n, str) and isinstance(s, int) for n, s in models.items()):
            raise ValueError(f"Family {self.name!r}: `models` must map model names to native sizes. "
                             f"Received: models={self.models!r}")
        small = {n: s for n, s in models.items() if s < self.min_size}
        if small:
            raise ValueError(f"Family {self.name!r}: native sizes below min_size={self.min_size}. "
                             f"Received: {small}")
        rules = tuple((str(pattern), str(repl)) for pattern, repl in self.block_rules)
        if rules and (self.unit_pattern or self.unit_closer):
            raise ValueError(f"Family {self.name!r}: give `block_rules` (named blocks) or `unit_pattern` / "
                             f"`unit_closer` (staged blocks), not both")
        for pattern in [p for p, _ in rules] + [p for p in (self.unit_pattern, self.unit_closer) if p]:
            re.compile(pattern)
        object.__setattr__(self, "models", MappingProxyType(models))
        object.__setattr__(self, "block_rules", rules)

    @property
    def staged(self) -> bool:
        """True when blocks are stages split at each downsampling (no `block_rules`)."""
        return not self.block_rules


_CONV_RULES = ((r"^(conv\d+)_", r"\1"),)
_BLOCK_RULES = ((r"^(block\d+)_", r"\1"),)
_EFFICIENTNET_RULES = ((r"^(stem)_", r"\1"), (r"^(block\d+)[a-z]_", r"\1"), (r"^(top)_", r"\1"))

#: The table: one entry per keras.applications family.
FAMILIES: tuple[Family, ...] = (
    Family("vgg16", {"VGG16": 224}, "caffe", block_rules=_BLOCK_RULES),
    Family("vgg19", {"VGG19": 224}, "caffe", block_rules=_BLOCK_RULES),
    Family("resnet", {"ResNet50": 224, "ResNet101": 224, "ResNet152": 224}, "caffe", block_rules=_CONV_RULES),
    Family("resnet_v2", {"ResNet50V2": 224, "ResNet101V2": 224, "ResNet152V2": 224}, "tf",
           block_rules=_CONV_RULES),
    Family("xception", {"Xception": 299}, "tf", min_size=71, block_rules=_BLOCK_RULES),
    Family("inception_v3", {"InceptionV3": 299}, "tf", min_size=75, unit_closer=r"^mixed\d+$"),
    Family("inception_resnet_v2", {"InceptionResNetV2": 299}, "tf", min_size=75,
           unit_pattern=r"^(block35_\d+|block17_\d+|block8_\d+|mixed_\w+?)(?:_|$)"),
    Family("mobilenet", {"MobileNet": 224}, "tf", unit_pattern=r"^conv_(?:dw|pw|pad)_(\d+)"),
    Family("mobilenet_v2", {"MobileNetV2": 224}, "tf", unit_pattern=r"^(block_\d+|expanded_conv)_"),
    Family("mobilenet_v3", {"MobileNetV3Small": 224, "MobileNetV3Large": 224}, "none",
           unit_pattern=r"^(expanded_conv(?:_\d+)?)_"),
    Family("nasnet", {"NASNetMobile": 224, "NASNetLarge": 331}, "tf"),
    Family("densenet", {"DenseNet121": 224, "DenseNet169": 224, "DenseNet201": 224}, "torch",
           block_rules=_CONV_RULES + ((r"^pool(\d+)", r"conv\1"),)),
    Family("efficientnet", {"EfficientNetB0": 224, "EfficientNetB1": 240, "EfficientNetB2": 260,
                            "EfficientNetB3": 300, "EfficientNetB4": 380, "EfficientNetB5": 456,
                            "EfficientNetB6": 528, "EfficientNetB7": 600}, "none",
           block_rules=_EFFICIENTNET_RULES),
    Family("efficientnet_v2", {"EfficientNetV2B0": 224, "EfficientNetV2B1": 240, "EfficientNetV2B2": 260,
                               "EfficientNetV2B3": 300, "EfficientNetV2S": 384, "EfficientNetV2M": 480,
                               "EfficientNetV2L": 480}, "none",
           block_rules=_EFFICIENTNET_RULES),
    Family("convnext", {"ConvNeXtTiny": 224, "ConvNeXtSmall": 224, "ConvNeXtBase": 224, "ConvNeXtLarge": 224,
                        "ConvNeXtXLarge": 224}, "none",
           block_rules=((r"_(stem)$", r"\1"), (r"_stage_(\d+)_", r"stage\1"),
                        (r"_downsampling_block_(\d+)$", "+stage\\1"))),
)

_BY_NAME = {family.name: family for family in FAMILIES}
_BY_MODEL = {model: family for family in FAMILIES for model in family.models}


def get_family(name: str) -> Family | None:
    """The family of a keras.applications module name ("resnet_v2"), or None if the table has none."""
    return _BY_NAME.get(name)


def family_of(arch: str) -> Family | None:
    """The family listing keras.applications model ``arch`` ("ResNet50V2"); for a model no family lists, the
    family of the module that defines it; else None."""
    family = _BY_MODEL.get(arch)
    if family is None:
        module = getattr(getattr(keras.applications, str(arch), None), "__module__", None) or ""
        family = _BY_NAME.get(module.rsplit(".", 1)[-1])
    return family


def min_size(arch: str) -> int:
    """Smallest input side keras.applications accepts for ``arch`` (`DEFAULT_MIN_SIZE` if no family has it)."""
    family = family_of(arch)
    return family.min_size if family is not None else DEFAULT_MIN_SIZE


def native_size(arch: str) -> int:
    """Native input side of keras.applications model ``arch`` (`DEFAULT_NATIVE_SIZE` if no family lists it)."""
    family = _BY_MODEL.get(arch)
    return family.models[arch] if family is not None else DEFAULT_NATIVE_SIZE
