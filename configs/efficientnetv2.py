"""EfficientNetV2 on ImageNet, the recipe of the timm/Ascend seed (004) for efficientnetv2_rw_t:
350 epochs, RMSpropTF (epsilon 1e-3), learning rate 0.112, step decay by 0.97 every 2.4 epochs
after a warmup from 4e-6, weight decay 1e-5, dropout 0.3, stochastic depth 0.2, RandAugment
rand-m9-mstd0.5, mixup 0.2, EMA 0.9999, 288 px; reported 82.34 % top-1 (8 GPUs).
Where the seed is silent, timm's train.py defaults of that time: random bilinear/bicubic
interpolation, no random erasing, no CutMix; evaluation as timm's efficientnetv2_rw_t (crop_pct
1.0, bicubic).

The seed gives its learning rate for its 8-device batch without stating the batch; timm's
RMSpropTF recipes use 0.016 per 256 images, which 0.112 matches at 1792 (224 per device), so that
is the base batch here. timm's warmup of that time was 3 epochs.

Variants: `configs/efficientnetv2.py:rw_t` (b0_tf ... xl_tf, s, m, l, rw_t, rw_s, rw_m; default
rw_t). Set `--config.fsdp=True` for the large ones.
"""

from configs import default


def get_config(variant: str = ""):
    c = default.family_config("efficientnet_v2", variant, "rw_t")
    c.num_epochs = 350.0
    c.image_size = 288
    c.batch_size = 1792
    c.optimizer = "rmsprop_tf"
    c.opt_eps = 1e-3
    c.rmsprop_decay = 0.9
    c.momentum = 0.9
    c.lr = 0.112
    c.lr_base_batch_size = 1792
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
    c.crop_pct = 1.0  # timm's evaluation of efficientnetv2_rw_t at 288 px
    c.eval_interpolation = "bicubic"
    c.mixup = 0.2
    return c
