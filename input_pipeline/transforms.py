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
formats), at a reduced size when the crop allows it (DCT scaling by 1/2, 1/4 or 1/8), into PIL's
own pixel layout, so that PIL's antialiased resize reads the crop where it lies: no copy between
the decoder and the resize, and none of the float conversions torchvision's `ToTensor` and
`Normalize` make on the host (docs/benchmarks.md, "Input pipeline on CPU").
16-bit grey images (PNG, TIFF) keep their top 8 bits, where PIL's and torchvision's
`convert("RGB")` clip every value above 255 to white. PIL's refusal of a decompression bomb (more
than twice `Image.MAX_IMAGE_PIXELS` pixels) is reported as such, for JPEGs too, and the image is
skipped like any unreadable one.
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


def _jpeg_size(data) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG that libjpeg-turbo decodes to RGB itself (YCbCr,
    RGB or grey); None for anything else (other formats, CMYK JPEGs, arrays): PIL opens those."""
    if simplejpeg is None or not isinstance(data, bytes) or not simplejpeg.is_jpeg(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # a damaged header: PIL reads what it can, or says what is wrong
        return None
    if colorspace not in ("YCbCr", "RGB", "Gray"):
        return None
    limit = Image.MAX_IMAGE_PIXELS  # PIL's refusal (Image.open), which this path does not pass through
    if limit and width * height > 2 * limit:
        raise CorruptImage(
            f"refused as a possible decompression bomb: {width * height} pixels, more than twice "
            f"Image.MAX_IMAGE_PIXELS ({limit})"
        )
    return width, height


def _reduction(width: int, height: int, request: tuple[int, int] | None) -> int:
    """The largest of 1, 2, 4, 8 that JPEG DCT scaling can divide the size by and still give at
    least `request` pixels. libjpeg-turbo also scales by 3/8 ... 7/8, but those decode slower than
    the full size (their inverse DCTs are plain C; a 500x375 JPEG at 5/8 took 0.96 ms, whole 0.76)."""
    factor = 1
    while (
        request and factor < 8 and -(-width // (2 * factor)) >= request[0] and -(-height // (2 * factor)) >= request[1]
    ):
        factor *= 2
    return factor


def _decode_pil(image: Image.Image, request: tuple[int, int] | None) -> Image.Image:
    """A PIL image as RGB, a JPEG at PIL's DCT reduction (`draft`: 1/2, 1/4, 1/8) still at least `request`."""
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


class Encoded:
    """An image's encoded bytes (or a uint8 array) and its size, read from the header alone: the
    pixels are decoded later, at the size that the crop needs.

    JPEGs in YCbCr, RGB or grey are decoded by libjpeg-turbo (simplejpeg), into PIL's own pixel
    layout (RGBX), so that PIL reads a crop where it lies: no copy between decoder and resize.
    Everything else goes through PIL (`open_image`).
    """

    def __init__(self, data: bytes | np.ndarray):
        self.data = data
        self._pil = None
        size = _jpeg_size(data)
        if size is None:
            self._pil = open_image(data)
            size = self._pil.size
        self.size = size

    def decode(self, request: tuple[int, int] | None = None) -> np.ndarray | Image.Image:
        """RGB pixels, at the largest DCT reduction (JPEG) still at least `request`: a uint8 array
        for the JPEGs libjpeg-turbo decodes, a PIL image (RGB) for the rest."""
        if self._pil is not None:
            return _decode_pil(self._pil, request)
        width, height = self.size
        factor = _reduction(width, height, request)
        return simplejpeg.decode_jpeg(self.data, "RGB", min_width=-(-width // factor), min_height=-(-height // factor))

    def region(
        self, box: tuple[float, ...], request: tuple[int, int] | None, crop: bool
    ) -> tuple[Image.Image, tuple[float, ...]]:
        """The decoded pixels that hold `box` (full-resolution coordinates) and the box within them.

        With `crop`, the whole pixels around the box; otherwise the whole image. A JPEG is decoded
        at the largest DCT reduction still at least `request`, and the box scaled with it.
        """
        width, height = self.size
        if self._pil is not None:
            image = _decode_pil(self._pil, request)
            dw, dh = image.size
        else:
            factor = _reduction(width, height, request)
            dw, dh = -(-width // factor), -(-height // factor)
            # One row of slack: a region right of column 0 maps past the last row's end.
            pixels = np.empty((dh + 1) * dw * 4, np.uint8)
            simplejpeg.decode_jpeg(self.data, "RGBX", min_width=dw, min_height=dh, buffer=pixels)  # strict
            image = None
        if (dw, dh) != (width, height):
            sx, sy = dw / width, dh / height
            # Clamped: width * (dw / width) can round one ulp above dw (87 * (44 / 87) = 44.00000000000001),
            # and its ceiling would read a row or column past the decoded image.
            box = (box[0] * sx, box[1] * sy, min(box[2] * sx, dw), min(box[3] * sy, dh))
        outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])) if crop else None
        outer = outer or (0, 0, dw, dh)
        if image is not None:
            image = image.crop(outer) if crop else image
        else:
            start = (outer[1] * dw + outer[0]) * 4
            size = (outer[2] - outer[0], outer[3] - outer[1])
            image = Image.frombuffer("RGBX", size, pixels[start:], "raw", "RGBX", dw * 4, 1)
        return image, (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])


def _resize_box(
    image: Encoded,
    box: tuple[float, ...],
    size: tuple[int, int],
    resample,
    draft: bool,
    crop: bool = False,
) -> Image.Image:
    """The region `box` (left, top, right, bottom; full-resolution pixels) of `image`, resized to
    `size`: a PIL image, RGB or RGBX (`pixels` makes either an RGB array).

    `crop=True` resizes the region alone, as torchvision's `resized_crop` does (the filter sees
    no pixel outside it); `crop=False` samples the whole image, as a resize followed by a crop.
    With `draft`, a JPEG is decoded at the largest power-of-two reduction that keeps the region
    at least `size`: the decode is then up to 64x less work.
    """
    try:
        request = None
        if draft:
            width, height = image.size
            box_w, box_h = box[2] - box[0], box[3] - box[1]
            request = (math.ceil(width * size[0] / box_w), math.ceil(height * size[1] / box_h))
        region, box = image.region(box, request, crop)
        return region.resize(size, resample, box=box)
    except CorruptImage:
        raise
    except Exception as e:  # decoding happens here, lazily: truncated data, bad markers, ...
        raise CorruptImage(str(e)) from None


def pixels(image: Image.Image) -> np.ndarray:
    """An RGB or RGBX PIL image -> uint8 RGB HWC (one copy: PIL packs RGBX to RGB in C)."""
    if image.mode == "RGBX":
        return np.frombuffer(image.tobytes("raw", "RGB"), np.uint8).reshape(image.height, image.width, 3)
    return np.asarray(image)


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
        image = Encoded(data)
        box = random_resized_crop_box(*image.size, rng, self.scale, self.ratio)
        out = _resize_box(image, box, (self.size, self.size), _resample(self.interpolation, rng), self.draft, crop=True)
        if self.hflip and rng.random() < self.hflip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)  # PIL's flip is ~10x faster than a strided numpy copy
        if self.randaugment is not None:
            out = self.randaugment(out.convert("RGB"), rng)
        return pixels(out)


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
        image = Encoded(data)
        size = (self.size, self.size)
        return pixels(_resize_box(image, self.box(*image.size), size, self.resample, self.draft))


def _decoded(data: bytes | np.ndarray) -> np.ndarray:
    """Encoded bytes or a uint8 array -> uint8 RGB HWC (CorruptImage for unreadable bytes)."""
    if isinstance(data, np.ndarray) and data.ndim == 3 and data.shape[2] == 3:
        return data
    try:
        return np.asarray(Encoded(data).decode())
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
