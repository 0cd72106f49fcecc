"""Real photos that ship inside installed packages, preprocessed as the models expect.

No data set can be downloaded at run time on our CI machines, but scikit-learn ships two colour
photos (`load_sample_images`: a Chinese temple and a flower).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# torchvision's and timm's ImageNet normalisation, RGB in [0, 1].
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 RGB images (..., H, W, 3) -> float32, normalised with the ImageNet mean and std."""
    return (images.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square of a uint8 RGB image, resized to `size` (bicubic)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(square.resize((size, size), Image.BICUBIC))


def sample_photos(size: int) -> np.ndarray:
    """scikit-learn's sample photos, centre-cropped to `size` x `size`, normalised, NHWC float32."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    return normalize(np.stack([center_crop_resize(p, size) for p in photos]))
