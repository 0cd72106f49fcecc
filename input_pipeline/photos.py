"""Real photos that ship inside installed packages, as uint8 RGB pixels.

No data set can be downloaded at run time on our CI machines, but scikit-learn ships two colour
photos (`load_sample_images`) and scikit-image a dozen more (`skimage.data`, the ones that need
no download). They are what the model summary and the converter's `--verify` run on, normalised
by the caller as the network expects (`lightnets.preprocessing`).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
from PIL import Image

# Photographs in skimage.data that are part of the wheel (greyscale ones become RGB).
SKIMAGE_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket", "stereo_motorcycle",
)  # fmt: skip


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A greyscale, RGB or RGBA image as uint8 RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8) if image.dtype.kind in "fb" else image.astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3]


def crop_resize(image: np.ndarray, size: int, *, scale: float = 1.0, anchor: tuple[float, float] = (0.5, 0.5)):
    """A square of side `scale * min(H, W)` at `anchor` (0 top/left .. 1 bottom/right), resized
    to `size` x `size` (bicubic)."""
    h, w = image.shape[:2]
    side = max(1, round(min(h, w) * scale))
    top, left = round((h - side) * anchor[0]), round((w - side) * anchor[1])
    square = Image.fromarray(image[top : top + side, left : left + side])
    return np.asarray(square.resize((size, size), Image.BICUBIC))


def load_photos() -> dict[str, np.ndarray]:
    """Every shipped photo as uint8 RGB, by name; scikit-image's only if it is installed."""
    return dict(_load_photos())


@functools.cache
def _load_photos() -> dict[str, np.ndarray]:
    # Decoding them takes 2 s; they are read-only, so one copy serves every caller.
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {pathlib.Path(name).stem: to_rgb(img) for name, img in zip(sample.filenames, sample.images, strict=True)}
    try:
        import skimage.data
    except ImportError:
        skimage = None
    for name in SKIMAGE_PHOTOS if skimage else ():
        image = getattr(skimage.data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            photos[f"{name}_left"], photos[f"{name}_right"] = to_rgb(image[0]), to_rgb(image[1])
        else:
            photos[name] = to_rgb(image)
    for image in photos.values():
        image.flags.writeable = False
    return photos


def sample_pixels(size: int, views: int = 1) -> np.ndarray:
    """The shipped photos, NHWC uint8.

    `views=1` is each photo's centre crop; `views=4` adds its mirror image and two 70 % crops
    (top-left, bottom-right), for comparisons that need more than a handful of images.
    """
    if views not in (1, 4):
        raise ValueError(f"views must be 1 or 4, got {views}")
    crops = []
    for photo in load_photos().values():
        centre = crop_resize(photo, size)
        crops.append(centre)
        if views == 4:
            crops.append(centre[:, ::-1])
            crops.append(crop_resize(photo, size, scale=0.7, anchor=(0.0, 0.0)))
            crops.append(crop_resize(photo, size, scale=0.7, anchor=(1.0, 1.0)))
    return np.stack(crops)


def load_pixels(paths: list[str], size: int) -> np.ndarray:
    """Image files, centre-cropped to `size` x `size`, NHWC uint8."""
    if not paths:
        raise ValueError("no images given")
    crops = []
    for path in paths:
        with Image.open(path) as image:
            crops.append(crop_resize(np.asarray(image.convert("RGB")), size))
    return np.stack(crops)
