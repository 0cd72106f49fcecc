"""MobileNetV2 on ImageNet, the recipe of the PyTorch/Ascend seed (000; Ascend ModelZoo-PyTorch
MobileNetV2_for_PyTorch, test/train_full_8p.sh and train/mobilenetv2_8p_main_anycard.py), each
value traced to its file and line in docs/recipes.md: 600 epochs, global batch 4096 (8 devices),
SGD with momentum 0.9, learning rate 0.4 decayed by 0.98 every 2.5 epochs with no warmup, weight
decay 1e-4 on every parameter (BatchNorm and biases included), plain cross-entropy, seed 49,
mixed precision; reported 71.3 % top-1 for the 1.0 network.

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
    # lr * 0.98 ** (step // int(2.5 * steps_per_epoch)); ours steps at whole epochs (timm's), at
    # most half an epoch after the seed's.
    c.schedule = "step"
    c.decay_epochs = 2.5
    c.decay_rate = 0.98
    c.warmup_epochs = 0.0
    c.weight_decay = 1e-4
    c.weight_decay_norm_and_bias = True  # SGD(model.parameters(), weight_decay=...)
    c.label_smoothing = 0.0  # nn.CrossEntropyLoss()
    c.seed = 49
    c.loss_scale = "64"  # with --config.dtype=float16: the seed's apex `--loss-scale` default (docs/recipes.md)
    return c
