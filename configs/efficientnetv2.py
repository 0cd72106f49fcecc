"""`efficientnet_v2_rw_t` (the network of the EfficientNetV2 seed) at 224 px."""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "efficientnet_v2_rw_t"
    config.image_size = 224
    return config
