"""`mobilenet_v1_100` (the network of the MobileNetV1 seed) at 224 px."""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "mobilenet_v1_100"
    config.image_size = 224
    return config
