"""MobileNetV1, the recipes of the MindSpore model-zoo seed (002), each value traced to the seed's
file and line in docs/recipes.md.

ImageNet (`configs/mobilenetv1.py`, `configs/mobilenetv1.py:050`, ...; default_config_imagenet.yaml):
90 epochs, 256 images on each of 4 devices (global 1024), SGD with momentum 0.9, learning rate
0.8 decayed linearly to 0 with no warmup, weight decay 1e-4 (not on BatchNorm or biases),
label smoothing 0.1; reported 71.28 % top-1 for the 1.0 network. The default is the seed's own
network, `mobilenet_v1_100_ms` (TensorFlow's "same" padding), with ImageNet's 1000 classes: the
seed's 1,001st logit is one no image has, which `--to_mindspore` adds back (README);
`configs/mobilenetv1.py:100` and the other widths train timm's network with the same recipe.

CIFAR-10 (`configs/mobilenetv1.py:cifar10`; default_config.yaml): 90 epochs at batch 32,
momentum 0.9, weight decay 1e-4, the "poly" schedule (warmup 0.01 -> 0.1 over 5 epochs, then
0.1 * (1 - t)^2), no label smoothing; pad-4 random crop and flip at 32 px, resized to 224, CIFAR's
mean and std. Give the data with `--config.dataset=cifar10:PATH` (the binary batches) or use
`tfds:cifar10`, the default; the seed's network with a 10-class head.

Variants: 025, 050, 075, 100, 125, 100_ms (default 100_ms); named recipes: cifar10.
"""

from configs import default


def get_config(variant: str = ""):
    if variant in RECIPES:
        return RECIPES[variant]()
    try:
        c = default.family_config("mobilenet_v1", variant, "100_ms")
    except ValueError as e:
        raise ValueError(f"{e}, or a named recipe: {list(RECIPES)}") from None
    c.seed = 1  # train.py: ms.set_seed(1)
    c.num_epochs = 90.0
    c.batch_size = 1024  # 256 per device, 4 devices
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = False
    c.lr = 0.8
    c.lr_base_batch_size = 1024
    c.schedule = "linear"
    c.warmup_epochs = 0.0
    c.warmup_lr = 0.0
    c.min_lr = 0.0
    c.weight_decay = 1e-4
    c.weight_decay_norm_and_bias = False  # the Ascend script leaves out gamma, beta and bias
    c.label_smoothing = 0.1
    c.crop_scale = (0.08, 1.0)
    c.crop_ratio = (0.75, 1.333)  # src/dataset.py's RandomCropDecodeResize, not 4/3
    c.hflip = 0.5
    c.crop_pct = 224 / 256  # Resize(256), CenterCrop(224)
    # The ModelZoo config's `loss_scale: 1024` (FixedLossScaleManager); used with --config.dtype=float16.
    c.loss_scale = "1024"
    return c


def cifar10():
    c = get_config()
    c.dataset = "tfds:cifar10"
    c.num_classes = 10
    c.batch_size = 32
    c.lr = 0.1
    c.lr_base_batch_size = 32
    c.schedule = "poly"
    c.warmup_epochs = 5.0
    c.warmup_lr = 0.01
    c.min_lr = 0.0  # the seed's lr_end (1e-5) is not read by its poly schedule
    c.label_smoothing = 0.0
    c.train_transform = "pad_crop"
    c.crop_padding = 4
    c.hflip = 0.5
    c.image_size = 224
    c.crop_pct = 1.0  # the whole 32 px image resized to 224, as Resize((224, 224)) does
    c.mean = (0.4914, 0.4822, 0.4465)
    c.std = (0.2023, 0.1994, 0.2010)
    return c


# Named recipes, `configs/mobilenetv1.py:NAME`.
RECIPES = {"cifar10": cifar10}
