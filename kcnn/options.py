"""The choice lists of kcnn's settings, in one module that imports nothing (the recipes read them for their flags
before TensorFlow loads; the library checks its arguments against the same tuples)."""

#: Training-split augmentations (`kcnn.data.load`'s ``augment``; it also takes the old spelling "standard-noflip"
#: of "crop").
AUGMENTS = ("none", "standard", "crop", "photo", "randaugment", "trivialaugment")
#: Learning-rate shapes of a phase (`kcnn.transfer.Phase`'s ``schedule``).
LR_SCHEDULES = ("constant", "cosine", "linear", "onecycle")
#: Optimizers of a phase.
OPTIMIZERS = ("adam", "sgd", "adamw", "rmsprop")
#: Batch-norm modes of a phase.
BN_MODES = ("frozen", "train")
#: What picks the kept epoch (`kcnn.training.BestEpoch`).
MONITORS = ("val_accuracy", "val_loss")
#: Test-time augmentation (`kcnn.training.evaluate`).
TTA_MODES = ("none", "flip")
#: Classifier heads (`kcnn.layers.classifier_head`, the recipes' ``--head``).
HEADS = ("gap", "dense", "conv")
#: Normalization of the builders (`kcnn.layers.conv_block`'s ``norm``; the recipes' ``--norm`` spells None "none").
NORMS = (None, "batch")
#: Class weights of the training split (`kcnn.data.load`'s ``class_weight``; the recipes' ``--class-weight``).
CLASS_WEIGHTS = ("none", "balanced")
#: Training precisions (the recipes' ``--precision``; "auto" resolves through `kcnn.perf.auto_precision`).
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
#: Every Keras mixed-precision policy kcnn sets (the bench's ``--precision`` also takes mixed_float16, for GPUs).
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
#: Where a recipe trains (`kcnn.distribute.make_strategy`).
DISTRIBUTE_KINDS = ("none", "mirrored", "multiworker")
#: Schedule rules computed from the training set's size (`kcnn.transfer.RULES`, ``recipes.finetune --schedule``).
SCHEDULE_RULES = ("auto", "fastai", "bit", "keras-guide")
