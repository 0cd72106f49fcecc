"""Per-image transforms on the host: decoding, Inception crop, flip, RandAugment, eval crop, and
the CIFAR pad-and-crop (`PadCropTransform`).

    train = transforms.TrainTransform(224, randaugment="rand-m9-mstd0.5")
    image = train(encoded_jpeg_bytes, np.random.default_rng(seed))   # uint8 (224, 224, 3)
    image = transforms.EvalTransform(224, crop_pct=0.875)(encoded_jpeg_bytes)

Everything takes either encoded bytes (JPEG, PNG, ...) or a uint8 array and returns uint8 RGB
HWC: images cross to the device as uint8 and are normalised there (`lightnets.preprocessing.Normalize.on_device`).
Randomness comes from the numpy Generator passed in (grain's `random_map` derives it from the
seed and the example's position), so a pipeline is reproducible and resumable.

Speed: JPEGs are decoded by libjpeg-turbo through simplejpeg (faster than PIL; PIL for other
formats), at a reduced size when the crop allows it (DCT scaling by 1/2, 1/4 or 1/8), and only
the crop is handed to PIL's antialiased resize. 16-bit grey images (PNG, TIFF) keep their top 8
bits, where PIL's and torchvision's `convert("RGB")` clip every value above 255 to white. PIL's
refusal of a decompression bomb (more than twice `Image.MAX_IMAGE_PIXELS` pixels) is reported as
such, and the image is skipped like any unreadable one.
The crop and resize geometry is torchvision's (`RandomResizedCrop`, `Resize` + `CenterCrop`);
RandAugment is timm's (`rand_augment_transform`), op for op.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _resample(interpolation: str, rng: np.random.Generator):
    """The PIL filter named by `interpolation`; `random` draws bilinear or bicubic (timm's training default)."""
    if interpolation == "random":
        return (Image.BILINEAR, Image.BICUBIC)[int(rng.integers(2))]
    return INTERPOLATIONS[interpolation]


class CorruptImage(ValueError):
    """The bytes are not a readable image (truncated, not an image, unsupported)."""


def open_image(data: bytes | np.ndarray) -> Image.Image:
    """Encoded bytes or a uint8 array -> a PIL image, not yet decoded (for bytes) so `draft` still applies."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    if not data:
        raise CorruptImage("empty file")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # its header says more pixels than PIL will decode
        raise CorruptImage(f"refused as a possible decompression bomb: {e}") from None
    except Exception:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise CorruptImage("not a format PIL can read") from None


try:  # libjpeg-turbo's own API: decodes ImageNet-sized JPEGs ~20 % faster than PIL here
    import simplejpeg
except ImportError:  # pragma: no cover - PIL alone works, a little slower
    simplejpeg = None


# The modes PIL opens 16-bit grey images in (PNG: I;16 or I, TIFF: I;16, I;16B, ...).
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode(image: Image.Image, data, request: tuple[int, int] | None) -> Image.Image | np.ndarray:
    """Decodes `image` (opened from `data`) as RGB, at the smallest JPEG DCT reduction (1/2, 1/4,
    1/8) that is still at least `request` pixels when given. Returns a uint8 array or a PIL image."""
    if image.format == "JPEG" and image.mode in ("RGB", "L") and simplejpeg is not None and isinstance(data, bytes):
        w, h = request or (0, 0)
        return simplejpeg.decode_jpeg(data, "RGB", min_width=w, min_height=h)  # strict: corrupt data raises
    if request is not None and image.format == "JPEG":
        image.draft(image.mode, request)
    if image.mode in _SIXTEEN_BIT_GREY:
        # v >> 8 is exact for both ways 8-bit values are widened to 16 bits (v * 257, as PNG
        # recommends, and v << 8), and never more than one level below v * 255 / 65535 rounded.
        pixels = np.clip(np.asarray(image), 0, 65535) >> 8  # mode I (int32) holds 16-bit values too
        image = Image.fromarray(pixels.astype(np.uint8), "L")
    if image.mode != "RGB":  # grey, CMYK, palette, alpha: as torchvision's loader, convert("RGB")
        image = image.convert("RGB")
    return image


def _resize_box(
    image: Image.Image,
    box: tuple[float, ...],
    size: tuple[int, int],
    resample,
    draft: bool,
    crop: bool = False,
    data=None,
) -> Image.Image:
    """The region `box` (left, top, right, bottom; full-resolution pixels) of `image`, resized to `size`, RGB.

    `crop=True` resizes the region alone, as torchvision's `resized_crop` does (the filter sees
    no pixel outside it); `crop=False` samples the whole image, as a resize followed by a crop.
    With `draft`, a JPEG is decoded at the smallest power-of-two reduction that keeps the region
    at least `size`: the decode is then up to 64x less work. `data`: the encoded bytes of
    `image`, for the faster JPEG decoder.
    """
    try:
        width, height = image.size
        request = None
        if draft and image.format == "JPEG":
            box_w, box_h = box[2] - box[0], box[3] - box[1]
            request = (math.ceil(width * size[0] / box_w), math.ceil(height * size[1] / box_h))
        decoded = decode(image, data, request)
        dw, dh = decoded.size if isinstance(decoded, Image.Image) else (decoded.shape[1], decoded.shape[0])
        if (dw, dh) != (width, height):
            sx, sy = dw / width, dh / height
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        if box == (0, 0, dw, dh) and (dw, dh) == size:
            return decoded if isinstance(decoded, Image.Image) else Image.fromarray(decoded)
        if crop:  # the whole pixels that hold the box, then the box within them
            outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
            if isinstance(decoded, Image.Image):
                decoded = decoded.crop(outer)
            else:
                decoded = decoded[outer[1] : outer[3], outer[0] : outer[2]]
            box = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
        if not isinstance(decoded, Image.Image):
            decoded = Image.fromarray(decoded)
        return decoded.resize(size, resample, box=box)
    except CorruptImage:
        raise
    except Exception as e:  # decoding happens here, lazily: truncated data, bad markers, ...
        raise CorruptImage(str(e)) from None


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params`: 10 tries at a random area and aspect ratio,
    then the centre crop with the ratio clamped. Returns (left, top, right, bottom)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


class TrainTransform:
    """Inception-style random resized crop, horizontal flip and optional RandAugment."""

    def __init__(
        self,
        size: int,
        *,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip: float = 0.5,
        randaugment: str = "",
        interpolation: str = "bilinear",
        draft: bool = True,
        fill: tuple[int, int, int] = (128, 128, 128),
    ):
        self.size, self.scale, self.ratio, self.hflip, self.draft = size, tuple(scale), tuple(ratio), hflip, draft
        self.interpolation = interpolation
        if interpolation != "random" and interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r} is not one of {[*INTERPOLATIONS, 'random']}")
        self.randaugment = RandAugment(randaugment, interpolation=interpolation, fill=fill) if randaugment else None

    def __call__(self, data: bytes | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = open_image(data)
        box = random_resized_crop_box(*image.size, rng, self.scale, self.ratio)
        out = _resize_box(
            image, box, (self.size, self.size), _resample(self.interpolation, rng), self.draft, crop=True, data=data
        )
        if self.hflip and rng.random() < self.hflip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)  # PIL's flip is ~10x faster than a strided numpy copy
        if self.randaugment is not None:
            out = self.randaugment(out, rng)
        return np.asarray(out)


class EvalTransform:
    """Resize the shorter side to `floor(size / crop_pct)`, then the centre `size` x `size` (timm, torchvision)."""

    def __init__(self, size: int, *, crop_pct: float = 0.875, interpolation: str = "bilinear", draft: bool = True):
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"eval interpolation {interpolation!r} is not one of {list(INTERPOLATIONS)}")
        self.size, self.crop_pct, self.resample, self.draft = size, crop_pct, INTERPOLATIONS[interpolation], draft

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The source region whose resize is `Resize(floor(size / crop_pct))` then `CenterCrop(size)`."""
        short = math.floor(self.size / self.crop_pct)
        # torchvision's Resize(int): the shorter side becomes `short`, the longer one is truncated.
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        top, left = round((new_h - self.size) / 2), round((new_w - self.size) / 2)
        sx, sy = width / new_w, height / new_h
        return left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy

    def __call__(self, data: bytes | np.ndarray) -> np.ndarray:
        image = open_image(data)
        size = (self.size, self.size)
        return np.asarray(_resize_box(image, self.box(*image.size), size, self.resample, self.draft, data=data))


def _decoded(data: bytes | np.ndarray) -> np.ndarray:
    """Encoded bytes or a uint8 array -> uint8 RGB HWC (CorruptImage for unreadable bytes)."""
    if isinstance(data, np.ndarray) and data.ndim == 3 and data.shape[2] == 3:
        return data
    try:
        image = decode(open_image(data), data, None)
        return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    except CorruptImage:
        raise
    except Exception as e:  # decoding happens here, lazily: truncated data, bad markers, ...
        raise CorruptImage(str(e)) from None


def _resize_whole(image: np.ndarray, size: int, resample) -> Image.Image:
    """The whole image to size x size (MindSpore's `Resize((h, w))`; the aspect ratio is not kept)."""
    out = Image.fromarray(image)
    return out if out.size == (size, size) else out.resize((size, size), resample)


class PadCropTransform:
    """The CIFAR training augmentation (the MindSpore seed's `src/dataset.py`): pad `padding`
    pixels of black on each side, a random crop of the image's own size, a horizontal flip, then
    a resize of the whole crop to `size` x `size`; optional RandAugment after.

    PIL's bilinear filter on an enlargement weighs the same neighbours with the same weights as
    OpenCV's, which MindSpore's `Resize` calls (pixel centres at +0.5, edges repeated).
    """

    def __init__(
        self,
        size: int,
        *,
        padding: int = 4,
        hflip: float = 0.5,
        randaugment: str = "",
        interpolation: str = "bilinear",
        fill: tuple[int, int, int] = (128, 128, 128),
    ):
        if not (isinstance(padding, int) and padding >= 0):
            raise ValueError(f"crop_padding must be a whole number of pixels >= 0, got {padding!r}")
        if interpolation != "random" and interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r} is not one of {[*INTERPOLATIONS, 'random']}")
        self.size, self.padding, self.hflip, self.interpolation = size, padding, hflip, interpolation
        self.randaugment = RandAugment(randaugment, interpolation=interpolation, fill=fill) if randaugment else None

    def __call__(self, data: bytes | np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = _decoded(data)
        h, w, p = image.shape[0], image.shape[1], self.padding
        top, left = (int(v) for v in rng.integers(0, 2 * p + 1, size=2))
        if p:
            image = np.pad(image, ((p, p), (p, p), (0, 0)))[top : top + h, left : left + w]
        if self.hflip and rng.random() < self.hflip:
            image = image[:, ::-1]
        out = _resize_whole(np.ascontiguousarray(image), self.size, _resample(self.interpolation, rng))
        if self.randaugment is not None:
            out = self.randaugment(out, rng)
        return np.asarray(out)


# Training transforms by name (`config.train_transform`).
TRAIN_TRANSFORMS = ("inception_crop", "pad_crop")

# --- RandAugment, timm's semantics (timm/data/auto_augment.py) ------------------------------------

_LEVEL_DENOM = 10.0
# timm's `rand` transform set (without Cutout, which is random erasing, done on the device).
RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)  # fmt: skip
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)  # fmt: skip


def _signed(value: float, negate: bool) -> float:
    return -value if negate else value


def level_to_arg(name: str, level: float, negate: bool, translate_pct: float = 0.45):
    """timm's LEVEL_TO_ARG: the op's argument at magnitude `level` (0..10); `negate` is the coin
    timm flips for the symmetric ops."""
    m = level / _LEVEL_DENOM
    base = name.removesuffix("Increasing")
    if base in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return _signed(m * 30.0, negate)
    if name in ("ShearX", "ShearY"):
        return _signed(m * 0.3, negate)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _signed(m * translate_pct, negate)
    if name == "Posterize":  # 8 bits (the image unchanged) from magnitude 20, where PIL would fail
        return min(8, int(m * 4))
    if name == "PosterizeIncreasing":
        return 4 - int(m * 4)
    if name == "Solarize":
        return min(256, int(m * 256))
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(m * 256))
    if name == "SolarizeAdd":
        return min(128, int(m * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return m * 1.8 + 0.1
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):  # the ...Increasing ones
        return max(0.1, 1.0 + _signed(m * 0.9, negate))
    raise ValueError(f"unknown RandAugment op {name!r}")


def apply_op(image: Image.Image, name: str, arg, *, fill: tuple[int, int, int], resample) -> Image.Image:
    """One RandAugment op on an RGB image, as timm's NAME_TO_OP does it."""
    base = name.removesuffix("Increasing")
    affine = {"resample": resample, "fillcolor": fill}
    w, h = image.size
    if base == "AutoContrast":
        return ImageOps.autocontrast(image)
    if base == "Equalize":
        return ImageOps.equalize(image)
    if base == "Invert":
        return ImageOps.invert(image)
    if base == "Rotate":
        return image.rotate(arg, **affine)
    if base == "Posterize":
        return image if arg >= 8 else ImageOps.posterize(image, arg)
    if base == "Solarize":
        return ImageOps.solarize(image, arg)
    if base == "SolarizeAdd":
        lut = [min(255, i + arg) if i < 128 else i for i in range(256)]
        return image.point(lut * 3)
    if base == "Color":
        return ImageEnhance.Color(image).enhance(arg)
    if base == "Contrast":
        return ImageEnhance.Contrast(image).enhance(arg)
    if base == "Brightness":
        return ImageEnhance.Brightness(image).enhance(arg)
    if base == "Sharpness":
        return ImageEnhance.Sharpness(image).enhance(arg)
    if base == "ShearX":
        return image.transform(image.size, Image.AFFINE, (1, arg, 0, 0, 1, 0), **affine)
    if base == "ShearY":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, arg, 1, 0), **affine)
    if base == "TranslateXRel":
        return image.transform(image.size, Image.AFFINE, (1, 0, arg * w, 0, 1, 0), **affine)
    if base == "TranslateYRel":
        return image.transform(image.size, Image.AFFINE, (1, 0, 0, 0, 1, arg * h), **affine)
    raise ValueError(f"unknown RandAugment op {name!r}")


class RandAugment:
    """timm's `rand_augment_transform(config_str)`: e.g. `rand-m9-mstd0.5` is 2 ops per image drawn
    (with replacement) from the 15 `rand` ops, each applied with probability 0.5 at a magnitude
    drawn from N(9, 0.5) and clipped to [0, 10]. Options: m (magnitude), n (ops), p (probability),
    mstd (magnitude std; > 100: uniform in [0, m]), mmax (upper clip), inc (the increasing set).
    Fill colour: the run's mean as pixels (`preprocessing.Normalize.fill`; timm's default grey
    without one); interpolation: the training one (`random`: bilinear or bicubic).
    """

    def __init__(self, config_str: str, *, interpolation: str = "random", fill: tuple[int, int, int] = (128, 128, 128)):
        sections = config_str.split("-")
        if sections[0] != "rand":
            raise ValueError(f"RandAugment config {config_str!r} must start with 'rand-' (e.g. 'rand-m9-mstd0.5')")
        self.magnitude, self.num_layers, self.prob, self.std, self.max, increasing = 10.0, 2, 0.5, 0.0, 10.0, False
        for section in sections[1:]:
            key, value = [*re.split(r"(\d.*)", section), ""][:2]
            try:
                if key == "m":  # a fraction too: progressive learning's stages (lightnets/training/progressive.py)
                    self.magnitude = float(value)
                elif key == "n":
                    self.num_layers = int(value)
                elif key == "p":
                    self.prob = float(value)
                elif key == "mstd":
                    self.std = math.inf if float(value) > 100 else float(value)
                elif key == "mmax":
                    self.max = float(int(value))
                elif key == "inc":
                    increasing = bool(int(value))
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"RandAugment config {config_str!r}: cannot read {section!r}; sections are m, n, p, mstd, mmax, inc"
                ) from None
        self.ops = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
        self.fill = tuple(fill)
        self.interpolation = interpolation

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for index in rng.integers(len(self.ops), size=self.num_layers):
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            magnitude = self.magnitude
            if self.std == math.inf:
                magnitude = rng.uniform(0, magnitude)
            elif self.std > 0:
                magnitude = rng.normal(magnitude, self.std)
            magnitude = max(0.0, min(magnitude, self.max))
            name = self.ops[index]
            arg = level_to_arg(name, magnitude, negate=rng.random() > 0.5)
            image = apply_op(image, name, arg, fill=self.fill, resample=_resample(self.interpolation, rng))
        return image
