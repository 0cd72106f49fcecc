"""MobileNetV2 on ImageNet, the recipe of the PyTorch/Ascend seed (000): 600 epochs, global batch
4096, SGD with momentum 0.9, learning rate 0.4, seed 49, mixed precision; reported 71.3 % top-1
for the 1.0 network.

Not in the seed's README, chosen as torchvision's MobileNetV2 recipe has them: weight decay 4e-5,
a cosine schedule, label smoothing 0.1.

Variants: `configs/mobilenetv2.py:140` (035, 050, 075, 100, 140; default 100).
"""

from configs import default


def get_config(variant: str = ""):
    c = default.family_config("mobilenet_v2", variant, "100")
    c.num_epochs = 600.0
    c.batch_size = 4096
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.lr = 0.4
    c.lr_base_batch_size = 4096
    c.weight_decay = 4e-5
    c.schedule = "cosine"
    c.label_smoothing = 0.1
    c.seed = 49
    return c
