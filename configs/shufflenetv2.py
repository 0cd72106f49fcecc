"""ShuffleNetV2 on ImageNet, the recipe of the PyTorch/Ascend seed (001): 240 epochs, global batch
8192, SGD without momentum, learning rate 4.0 with 5 warmup epochs, mixed precision; reported
65.16 % top-1 for the 1.0x network.

Not in the seed's README, chosen as the paper's reference code (Megvii) has them: weight decay 4e-5,
a linear decay to zero, label smoothing 0.1.

Variants: `configs/shufflenetv2.py:x0_5` (x0_5, x1_0, x1_5, x2_0; default x1_0).
"""

from configs import default


def get_config(variant: str = ""):
    c = default.family_config("shufflenet_v2", variant, "x1_0")
    c.num_epochs = 240.0
    c.batch_size = 8192
    c.optimizer = "sgd"
    c.momentum = 0.0
    c.lr = 4.0
    c.lr_base_batch_size = 8192
    c.warmup_epochs = 5.0
    c.weight_decay = 4e-5
    c.schedule = "linear"
    c.label_smoothing = 0.1
    return c
