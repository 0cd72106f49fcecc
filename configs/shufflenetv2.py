"""ShuffleNetV2 on ImageNet, the recipe of the PyTorch/Ascend seed (001; Ascend ModelZoo-PyTorch
Shufflenetv2_for_PyTorch, test/train_full_8p.sh and 8p_main_med.py), each value traced to its
file and line in docs/recipes.md: 240 epochs, global batch 8192 (8 devices), SGD without
momentum, learning rate 4.0 after 5 warmup epochs, then cosine to 0, weight decay 1e-4 on every
parameter, plain cross-entropy, seed 49, mixed precision; reported 65.16 % top-1 for the 1.0x
network. The seed's ColorJitter(0.2, 0.2, 0.2) has no counterpart here (docs/recipes.md).

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
    c.schedule = "cosine"
    c.min_lr = 0.0
    c.warmup_epochs = 5.0
    # The seed warms up per epoch, lr * (epoch + 1) / 6; ours per step, from that first rate.
    c.warmup_lr = 4.0 / 6
    c.weight_decay = 1e-4
    c.weight_decay_norm_and_bias = True  # NpuFusedSGD(model.parameters(), weight_decay=...)
    c.label_smoothing = 0.0  # nn.CrossEntropyLoss()
    c.seed = 49
    c.loss_scale = "64"  # with --config.dtype=float16: the seed's apex `--loss-scale` default (docs/recipes.md)
    return c
