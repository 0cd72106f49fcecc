"""lightnets: MobileNetV1/V2, ShuffleNetV2 and EfficientNetV2 in Flax NNX.

import lightnets
model = lightnets.create_model("mobilenet_v2_100", num_classes=1000)
model.eval()
logits = model(images)  # NHWC, normalised as `model_info(name).mean` and `.std` say (lightnets.preprocessing)
"""

from lightnets import models  # noqa: F401  (registers the variants)
from lightnets.models.registry import ModelInfo, create_model, forward, list_models, model_info

__all__ = ["ModelInfo", "create_model", "forward", "list_models", "model_info"]
__version__ = "0.1.0"
