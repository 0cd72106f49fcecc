"""EfficientNetV2 on ImageNet, the recipe of the timm/Ascend seed (004; Ascend ModelZoo-PyTorch
EfficientNetV2_for_PyTorch, test/train_full_8p.sh and its train.py, timm 0.5.4) for
efficientnetv2_rw_t, each value traced to its file and line in docs/recipes.md: 350 epochs, 256
images on each of 8 devices (global 2048), RMSpropTF (epsilon 1e-3), learning rate 0.112 (timm
0.5.4 does not rescale it), step decay by 0.97 every 2.4 epochs after a 3-epoch warmup from 4e-6,
weight decay 1e-5 (not on BatchNorm or biases), dropout 0.3, stochastic depth 0.2, RandAugment
rand-m9-mstd0.5, mixup 0.2, label smoothing 0.1, EMA 0.9999; reported 82.34 % top-1 (8 GPUs).

The seed trains at 224 px (`--input-size 3 224 224` takes precedence over `--img-size 288` in
timm's resolve_data_config) and evaluates at 288: `--mode=eval --config.image_size=288` after
training is the seed's evaluation.

Variants: `configs/efficientnetv2.py:rw_t` (b0_tf ... xl_tf, s, m, l, rw_t, rw_s, rw_m; default
rw_t). Set `--config.fsdp=True` for the large ones.
"""

from configs import default


def get_config(variant: str = ""):
    c = default.family_config("efficientnet_v2", variant, "rw_t")
    c.num_epochs = 350.0
    c.image_size = 224
    c.batch_size = 2048
    c.optimizer = "rmsprop_tf"
    c.opt_eps = 1e-3
    c.rmsprop_decay = 0.9
    c.momentum = 0.9
    c.lr = 0.112
    c.lr_base_batch_size = 2048
    c.schedule = "step"
    c.decay_epochs = 2.4
    c.decay_rate = 0.97
    c.warmup_epochs = 3.0
    c.warmup_lr = 4e-6
    c.weight_decay = 1e-5
    c.dropout = 0.3
    c.drop_path_rate = 0.2
    c.label_smoothing = 0.1
    c.ema_decay = 0.9999
    c.randaugment = "rand-m9-mstd0.5"
    c.train_interpolation = "random"  # timm's train.py default
    c.crop_pct = 1.0  # timm 0.5.4's default_cfg of efficientnetv2_rw_t
    c.eval_interpolation = "bicubic"
    c.mixup = 0.2
    c.seed = 42  # train.py's default
    return c
