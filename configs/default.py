"""Default configuration: MobileNetV2 1.0 at 224 px.

Override any field on the command line, e.g. `--config.model=shufflenet_v2_x1_0`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "mobilenet_v2_100"  # a name from `lightnets.list_models()`
    config.num_classes = 1000  # classifier size
    config.image_size = 224  # input resolution, pixels (square)
    config.dtype = "bfloat16"  # computation dtype; parameters and BatchNorm statistics stay float32
    config.seed = 0  # initialisation seed
    return config
