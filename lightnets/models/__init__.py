"""The families. Importing this module registers every variant."""
# isort: skip_file
# The import order is the registration order: that of `list_models()` and the README's table.

from lightnets.models.mobilenet_v1 import MobileNetV1
from lightnets.models.mobilenet_v2 import MobileNetV2
from lightnets.models.shufflenet_v2 import ShuffleNetV2, ShuffleUnit
from lightnets.models.efficientnet_v2 import EfficientNetV2
from lightnets.models.mobilenet_v3 import MobileNetV3

__all__ = ["EfficientNetV2", "MobileNetV1", "MobileNetV2", "MobileNetV3", "ShuffleNetV2", "ShuffleUnit"]
