"""`shufflenet_v2_x1_0` at 224 px."""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "shufflenet_v2_x1_0"
    config.image_size = 224
    return config
