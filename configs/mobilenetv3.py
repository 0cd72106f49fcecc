"""MobileNetV3 on ImageNet, torchvision's recipe for `mobilenet_v3_large`/`_small` (no seed of
ours trains it; torchvision's is the reference its weights come from): `references/classification`
of pytorch/vision, README "MobileNetV3 Large & Small" and the torchvision 0.9 release blog
(https://pytorch.org/blog/ml-models-torchvision-v0.9/#classification):

    torchrun --nproc_per_node=8 train.py --model mobilenet_v3_large --epochs 600 --opt rmsprop
        --batch-size 128 --lr 0.064 --wd 0.00001 --lr-step-size 2 --lr-gamma 0.973
        --auto-augment imagenet --random-erase 0.2

600 epochs, global batch 1024 (128 x 8), RMSprop (alpha 0.9, momentum 0.9, eps 0.0316 outside the
square root) at 0.064, weight decay 1e-5 on every parameter, the rate times 0.973 every 2 epochs,
random erasing 0.2; reported 74.04 % (large) and 67.67 % (small) top-1.

Our choices where lightnets has no equivalent: `rmsprop_tf` with epsilon 1e-3 inside the square
root (0.0316 outside it is the same for small averages: 0.0316^2 = 1e-3; timm's reading of the same
TF recipe); RandAugment `rand-m9-mstd0.5` in place of torchvision's AutoAugment ImageNet policy,
which lightnets does not implement.

Variants: `configs/mobilenetv3.py:small_100` (small_100, large_100, and their `_timm` twins; default
large_100).
"""

from configs import default


def get_config(variant: str = ""):
    c = default.family_config("mobilenet_v3", variant, "large_100")
    c.num_epochs = 600.0
    c.batch_size = 1024
    c.optimizer = "rmsprop_tf"
    c.rmsprop_decay = 0.9
    c.momentum = 0.9
    c.opt_eps = 1e-3
    c.lr = 0.064
    c.lr_base_batch_size = 1024
    c.weight_decay = 1e-5
    c.weight_decay_norm_and_bias = True  # torchvision's --norm-weight-decay is unset: every parameter
    c.schedule = "step"
    c.decay_epochs = 2.0
    c.decay_rate = 0.973
    c.label_smoothing = 0.0  # torchvision's --label-smoothing default
    c.reprob = 0.2
    c.randaugment = "rand-m9-mstd0.5"
    return c
