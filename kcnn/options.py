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
