"""MobileNetV1 on ImageNet, the recipe of the MindSpore seed (002): 90 epochs, global batch 1024
(256 on each of 4 devices), SGD with momentum, cosine schedule, label-smoothed cross-entropy;
reported 71.28 % top-1 for the 1.0 network.

The seed's README does not state the learning rate and weight decay; these are its ModelZoo
config's (0.4 at 1024 images, 5e-5).

Variants: `configs/mobilenetv1.py:050` (025, 050, 075, 100, 125; default 100).
"""

from configs import default


def get_config(variant: str = ""):
    c = default.family_config("mobilenet_v1", variant, "100")
    c.num_epochs = 90.0
    c.batch_size = 1024
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.lr = 0.4
    c.lr_base_batch_size = 1024
    c.weight_decay = 5e-5
    c.schedule = "cosine"
    c.label_smoothing = 0.1
    # The ModelZoo config's `loss_scale: 1024` (FixedLossScaleManager); used with --config.dtype=float16.
    c.loss_scale = "1024"
    return c
