"""`mobilenet_v2_100` at 224 px."""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "mobilenet_v2_100"
    config.image_size = 224
    return config
