"""The names each registry answers to, in a module light enough for the config to import.

The registries are keyed by these tuples: the readers of ``data.name``
(:data:`resnext.data.build.READERS`), the train augmentations of ``data.augment``
(:func:`resnext.data.transforms.train_transform`), the resize filters of
``data.interpolation`` (:mod:`resnext.data.eval_transforms`), and the optimizer and
schedules of ``optim.name`` and ``schedule.name`` (:mod:`resnext.engine.optim`).
:data:`resnext.config.CHOICES` derives its choices from them. The registries themselves
import torchvision or the training engine, which ``import resnext.config`` must not (the
CLI's start-up), so the names live here; tests check each registry against its tuple.
"""

#: ``data.name``: one reader each (data/build.py), in the order the config lists them.
READERS = (
    "digits",
    "cifar10",
    "cifar100",
    "mnist",
    "fashion_mnist",
    "imagefolder",
    "imagelist",
    "webdataset",
    "tiny_imagenet",
)
#: ``data.augment``: the train transforms of data/transforms.py.
AUGMENTATIONS = ("none", "crop", "cifar", "imagenet", "imagenet_scale")
#: ``data.interpolation``: the resize filters (torchvision's names).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: ``optim.name``: the optimizers of engine/optim.py (the paper's SGD).
OPTIMIZERS = ("sgd",)
#: ``schedule.name``: the learning-rate schedules of engine/optim.py.
SCHEDULES = ("step", "multistep", "cosine", "constant")
#: ``train.ema_bn``: how the EMA keeps its BatchNorm statistics (engine/ema.py).
EMA_BN_MODES = ("recompute", "copy", "average")
