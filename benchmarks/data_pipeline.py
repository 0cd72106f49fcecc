"""Input pipeline throughput on ImageNet-like JPEGs: images/s per core, training and evaluation
path, and side by side with torchvision's DataLoader.

    PYTHONPATH=. python benchmarks/data_pipeline.py [--compare_torch] [--images=2000] [--device_rate=16000]

Makes its own data (`make_imagenet_like`): JPEGs from the photos that ship with scikit-learn and
scikit-image, most 500x375 or 375x500 and a tenth larger (mosaics of native-resolution crops),
quality 90 or 95, in the seeds' folder layout; it prints their mix and mean size. Then:

1. single core (`--single_core`, in this process, one thread): decoding alone (PIL, PIL with
   draft, simplejpeg, OpenCV if installed); the trainer's training path (`datasets.train_iterator`:
   read, decode, Inception crop, flip, batch) without and with RandAugment; the evaluation path
   (resize, centre crop); both on prepared copies (`python -m input_pipeline.prepare`); the
   training path with one grain worker process per core; and where a training image's time goes,
   stage by stage, ours and torchvision's, with how far the speed-ups that change pixels (DCT
   reduction, PIL's `reducing_gap`) move them;
2. with `--compare_torch`, ours against what the PyTorch seeds run (torchvision's `ImageFolder`
   with the PIL loader, `RandomResizedCrop(224)`, `RandomHorizontalFlip`, `ToTensor`, `Normalize`;
   for evaluation `Resize(256)`, `CenterCrop(224)`; a `DataLoader` with `num_workers` 1 and 2,
   persistent workers, pin_memory off), on the same files: each measurement in a process of its
   own, pinned to as many cores as it has workers (its main process shares them and is counted),
   ours and torchvision's alternated for `--pairs` pairs. It reports images/s per core (the rate
   over the pinned cores) and per CPU-second (images over the CPU time of the process and its
   workers, steadier on a shared machine), medians with their range, the ratio pair by pair, and
   checks that both deliver the same tensors: shape (after NHWC -> NCHW), float32 after our
   on-device normalisation, value range, and pixel or per-channel agreement.

and how many host cores a device running at `--device_rate` images/s needs with each.
"""

from __future__ import annotations

import datetime
import io
import itertools
import json
import math
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from input_pipeline import datasets, photos, prepare, transforms

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 2000, "ImageNet-like training JPEGs to make (and a quarter as many for validation)")
flags.DEFINE_float("large_fraction", 0.1, "the share of images larger than 500 px (800-1,800 px on the longer side)")
flags.DEFINE_integer("image_size", 224, "training and evaluation resolution")
flags.DEFINE_integer("batch_size", 64, "batch size of the pipeline runs")
flags.DEFINE_integer("device_rate", 16000, "a device's training images/s, for the cores-needed estimate")
flags.DEFINE_list("prepared_sides", ["160", "192", "256"], "shorter sides of the prepared copies to measure")
flags.DEFINE_string("workdir", None, "where to write the images (default: a temporary directory); reused if there")
flags.DEFINE_bool("single_core", True, "measure the single-core rows (decoders, paths, prepared copies)")
flags.DEFINE_bool("compare_torch", False, "measure torchvision's ImageFolder + DataLoader beside ours")
flags.DEFINE_integer("pairs", 5, "--compare_torch: pairs of processes (ours, torchvision) per row")
flags.DEFINE_list("compare_workers", ["1", "2"], "--compare_torch: worker processes (= pinned cores) per row")
flags.DEFINE_float("seconds", 8.0, "--compare_torch: measured seconds per process (after its warm-up)")
flags.DEFINE_string("measure", None, "internal: one --compare_torch measurement, FRAMEWORK,PATH,WORKERS,FOLDER")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's Normalize in the seeds; ours: IMAGENET


# ImageNet-like: most of ILSVRC2012's training JPEGs are at most 500 px on the longer side (Flickr's
# "medium" size, typically 500x375 or 375x500), with a tail of much larger photos; the training
# archive holds 138 GB for 1,281,167 images, about 108 kB each. The shipped photos are 300 to
# 1,411 px, so larger images are mosaics of native-resolution crops (real detail, which
# compresses and decodes like a photo), never enlargements.
SMALL_SIDES = (500, 375)
TILE = (480, 360)  # a mosaic's cells: every shipped colour photo but one holds a crop this size


def colour_photos() -> list[np.ndarray]:
    """The shipped photos that are in colour (ImageNet's grey JPEGs are rare; a grey photo saved
    as RGB has empty chroma and decodes unrealistically fast)."""
    return [p for p in photos.load_photos().values() if not (np.ptp(p.astype(np.int16), axis=-1) == 0).all()]


def _native_crop(pool, rng, width: int, height: int) -> np.ndarray:
    fits = [p for p in pool if p.shape[0] >= height and p.shape[1] >= width]
    photo = fits[int(rng.integers(len(fits)))]
    top, left = int(rng.integers(photo.shape[0] - height + 1)), int(rng.integers(photo.shape[1] - width + 1))
    crop = photo[top : top + height, left : left + width]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _small_photo(pool, rng, width: int, height: int) -> np.ndarray:
    """A crop of one photo at its native resolution or larger, reduced (Lanczos) to width x height."""
    fits = [p for p in pool if p.shape[0] >= height and p.shape[1] >= width]
    photo = fits[int(rng.integers(len(fits)))]
    scale = rng.uniform(1.0, min(photo.shape[1] / width, photo.shape[0] / height))
    crop = _native_crop([photo], rng, math.floor(width * scale), math.floor(height * scale))
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.LANCZOS))


def _mosaic(pool, rng, width: int, height: int) -> np.ndarray:
    """width x height filled with a grid of native-resolution crops of the photos."""
    xs = np.linspace(0, width, math.ceil(width / TILE[0]) + 1).round().astype(int)
    ys = np.linspace(0, height, math.ceil(height / TILE[1]) + 1).round().astype(int)
    out = np.empty((height, width, 3), np.uint8)
    for top, bottom in itertools.pairwise(ys):
        for left, right in itertools.pairwise(xs):
            out[top:bottom, left:right] = _native_crop(pool, rng, right - left, bottom - top)
    return out


def make_imagenet_like(
    root: pathlib.Path, count: int, *, large_fraction: float = 0.1, val_count: int | None = None, seed: int = 0
) -> None:
    """`count` training JPEGs (and `val_count`, default count // 4, for validation) in 10 class
    folders, in the seeds' layout, from the shipped colour photos:

    - 1 - large_fraction: 500x375 (three in four) or 375x500;
    - large_fraction: the longer side uniform in 800-1,800 px, 4:3, landscape or portrait (as above);
    - quality 90 or 95, half each.

    Each image's size is in its file name (`_500x375`), so a subset can be chosen without decoding.
    """
    rng = np.random.default_rng(seed)
    pool = colour_photos()
    for split, n in (("train", count), ("val", max(count // 4, 10) if val_count is None else val_count)):
        for i in range(n):
            portrait = rng.random() < 0.25
            if rng.random() < large_fraction:
                longer = int(rng.integers(800, 1801))
                width, height = longer, round(longer * 3 / 4)
                make = _mosaic
            else:
                (width, height), make = SMALL_SIDES, _small_photo
            if portrait:
                width, height = height, width
            image = Image.fromarray(make(pool, rng, width, height))
            directory = root / split / f"class{i % 10:02d}"
            directory.mkdir(parents=True, exist_ok=True)
            image.save(directory / f"{split}_{i:05d}_{width}x{height}.JPEG", quality=int(rng.choice((90, 95))))


def describe_set(root: pathlib.Path) -> str:
    """The mix of sizes and the mean file size of a made set's training split, for the output."""
    files = sorted((root / "train").rglob("*.JPEG"))
    sizes = [f.stat().st_size for f in files]
    small = [f for f in files if f.stem.endswith(("_500x375", "_375x500"))]
    large = len(files) - len(small)
    return (
        f"{len(files)} training JPEGs: {len(small)} of 500x375 or 375x500, {large} larger (800-1,800 px on the "
        f"longer side); quality 90 or 95; {np.mean(sizes) / 1e3:.0f} kB on average "
        f"({np.mean([f.stat().st_size for f in small]) / 1e3:.0f} kB the 500 px ones)"
    )


def small_only(root: pathlib.Path) -> pathlib.Path:
    """A folder beside `root` with (links to) its 500x375 and 375x500 training images only."""
    subset = root.parent / f"{root.name}_500px"
    if not subset.exists():
        for f in sorted((root / "train").rglob("*.JPEG")):
            if f.stem.endswith(("_500x375", "_375x500")):
                target = subset / "train" / f.parent.name / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, target)
    return subset


# --- single core: decoders and the trainer's own iterators, in this process ------------------------


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its living descendants (read
    from /proc; elsewhere this process's own)."""
    if not os.path.isdir("/proc"):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    parent, used = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (name) ": state, ppid, ..., utime, stime
        parent[int(entry)], used[int(entry)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks
    tree, grown = {os.getpid()}, True
    while grown:
        grown = False
        for pid, ppid in parent.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grown = True
    return sum(used.get(pid, 0.0) for pid in tree)


def rate(fn, items, repeat: int = 5) -> tuple[list[float], list[float]]:
    """Items per second of `fn` over `items` in `repeat` passes, and per CPU-second."""
    rates, per_cpu = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), tree_cpu_seconds()
        for item in items:
            fn(item)
        rates.append(len(items) / (time.perf_counter() - start))
        per_cpu.append(len(items) / max(tree_cpu_seconds() - cpu, 1e-9))
    return rates, per_cpu


def decoders(blobs: list[bytes], size: int) -> dict[str, tuple[list[float], list[float]]]:
    # Decoded into the library's own memory (PIL keeps it; the pipeline resizes it there).
    def pil(data):
        Image.open(io.BytesIO(data)).load()

    def pil_draft(data):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (size, size))  # the largest reduction that keeps the shorter side >= size
        image.load()

    results = {"PIL (full size)": rate(pil, blobs), f"PIL draft (>= {size} px)": rate(pil_draft, blobs)}
    try:
        import simplejpeg

        results["simplejpeg (full size)"] = rate(lambda d: simplejpeg.decode_jpeg(d, "RGB"), blobs)
        results["simplejpeg RGBX (full size)"] = rate(lambda d: simplejpeg.decode_jpeg(d, "RGBX"), blobs)
        # libjpeg-turbo's 3/8 ... 7/8 scales are allowed here; the pipeline uses 1/2, 1/4, 1/8 only.
        results[f"simplejpeg any DCT scale >= {size} px"] = rate(
            lambda d: simplejpeg.decode_jpeg(d, "RGB", min_height=size, min_width=size), blobs
        )
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
        results["OpenCV imdecode (full size)"] = rate(
            lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR), blobs
        )
        results["OpenCV IMREAD_REDUCED_COLOR_2"] = rate(
            lambda d: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_REDUCED_COLOR_2), blobs
        )
    except ImportError:
        pass
    return results


def pipeline_rate(source, *, train: bool, transform, batch_size: int, workers: int = 0, batches: int = 8):
    """Images/s of the trainer's own iterators (threads=1: one core, unless `workers`) in 5 windows
    of `batches` batches (training) or passes over `source` (evaluation), and images per CPU-second
    of this process and its workers in the same windows."""
    rates, per_cpu = [], []

    def window(run):
        start, cpu = time.perf_counter(), tree_cpu_seconds()
        count = run()
        rates.append(count / (time.perf_counter() - start))
        per_cpu.append(count / max(tree_cpu_seconds() - cpu, 1e-9))

    if train:
        it = datasets.train_iterator(
            source,
            global_batch_size=batch_size,
            seed=0,
            transform=transform,
            workers=workers,
            threads=1,
            process_index=0,
            process_count=1,
        )
        next(it)  # start-up (and worker spawn) excluded
        for _ in range(5):
            window(lambda: sum(len(next(it)["label"]) for _ in range(batches)))
        if hasattr(it, "close"):
            it.close()
        return rates, per_cpu
    for _ in range(5):
        window(
            lambda: sum(
                int(b["valid"].sum())
                for b in datasets.eval_batches(source, global_batch_size=batch_size, transform=transform, threads=1)
            )
        )
    return rates, per_cpu


def single_core(workdir: pathlib.Path, root: pathlib.Path, size: int, batch: int) -> None:
    source = datasets.create_source(f"folder:{root}", "train", image_size=size)
    val = datasets.create_source(f"folder:{root}", "validation", image_size=size)
    blobs = [source[i]["image"] for i in range(min(len(source), 256))]
    print(f"\n## One thread of one core unless said ({os.cpu_count()} cores here); median and best of 5 windows")
    rows = [("decode only", name, value) for name, value in decoders(blobs, size).items()]
    train_tf = transforms.TrainTransform(size)
    for draft in (False, True):
        tf = transforms.TrainTransform(size, draft=draft)
        rows.append(
            (
                "train path",
                f"crop+flip, draft={draft}",
                pipeline_rate(source, train=True, transform=tf, batch_size=batch),
            )
        )
    ra = transforms.TrainTransform(size, randaugment="rand-m9-mstd0.5", interpolation="random")
    rows.append(
        ("train path", "crop+flip+RandAugment m9", pipeline_rate(source, train=True, transform=ra, batch_size=batch))
    )
    for draft in (False, True):
        tf = transforms.EvalTransform(size, draft=draft)
        rows.append(
            (
                "eval path",
                f"resize+centre crop, draft={draft}",
                pipeline_rate(val, train=False, transform=tf, batch_size=batch),
            )
        )
    for side in (int(s) for s in FLAGS.prepared_sides):
        copy = workdir / f"prepared_{side}"
        if not (copy / "info.json").exists():
            prepare.prepare(f"folder:{root}", str(copy), max_shorter_side=side, quality=90)
        prepared = datasets.create_source(f"prepared:{copy}", "train", image_size=size)
        prepared_val = datasets.create_source(f"prepared:{copy}", "validation", image_size=size)
        train_rate = pipeline_rate(prepared, train=True, transform=train_tf, batch_size=batch)
        eval_rate = pipeline_rate(prepared_val, train=False, transform=transforms.EvalTransform(size), batch_size=batch)
        rows.append((f"prepared {side}px", "train path crop+flip", train_rate))
        rows.append((f"prepared {side}px", "eval path", eval_rate))
    cores = os.cpu_count() or 1
    rows.append(
        (
            f"{cores} workers",
            "train path crop+flip (all cores)",
            pipeline_rate(source, train=True, transform=train_tf, batch_size=batch, workers=cores, batches=4 * cores),
        )
    )
    # This machine may be shared: the median says what to expect, the best what a quiet core does,
    # and images per CPU-second what a core does in the time it is given.
    print(
        f"{'':20s} {'':38s} {'median/s':>9s} {'best/s':>8s} {'per CPU-s':>10s} "
        f"{'cores for ' + str(FLAGS.device_rate) + '/s':>18s}"
    )
    for group, name, (rates, per_cpu) in rows:
        median, best = float(np.median(rates)), max(rates)
        per_core = median / cores if group.endswith("workers") else median
        print(
            f"{group:20s} {name:38s} {median:9.0f} {best:8.0f} {np.median(per_cpu):10.0f} "
            f"{FLAGS.device_rate / per_core:18.1f}"
        )
    sys.stdout.flush()


def _least_cpu_ms(fn, items, repeat: int = 5) -> float:
    """CPU ms per item of `fn` over `items`: the least of `repeat` passes (the least disturbed by other jobs)."""
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        for i, item in enumerate(items):
            fn(i, item)
        best = min(best, (time.process_time() - start) / len(items) * 1e3)
    return best


def stages(root: pathlib.Path, size: int, count: int = 100) -> None:
    """Where a training image's time goes, stage by stage, ours and torchvision's, on one core; and
    how far the speed-ups that change pixels (DCT reduction, PIL's `reducing_gap`) move them."""
    files = _files(root / "train")
    small = [f.read_bytes() for f in files if f.stem.endswith(("_500x375", "_375x500"))][:count]
    large = [f.read_bytes() for f in files if not f.stem.endswith(("_500x375", "_375x500"))][: count // 2]
    print(
        f"\n## Where a training image's time goes: CPU ms per image, least of 5 passes over {len(small)} 500 px JPEGs"
    )
    rng = np.random.default_rng(0)
    encoded = [transforms.Encoded(b) for b in small]
    boxes = [transforms.random_resized_crop_box(*e.size, rng) for e in encoded]
    regions = [e.region(box, None, crop=True) for e, box in zip(encoded, boxes, strict=True)]
    target = (size, size)
    outs = [region.resize(target, Image.BILINEAR, box=box) for region, box in regions]
    train = transforms.TrainTransform(size)
    ours = {
        "read the header": lambda i, b: transforms.Encoded(b),
        "decode (+ crop)": lambda i, b: encoded[i].region(boxes[i], None, crop=True),
        "resize the crop (PIL, antialiased)": lambda i, b: regions[i][0].resize(
            target, Image.BILINEAR, box=regions[i][1]
        ),
        "flip (every other image)": lambda i, b: i % 2 or outs[i].transpose(Image.FLIP_LEFT_RIGHT),
        "to the batch's format": lambda i, b: transforms.pixels(outs[i]),
        "the whole transform": lambda i, b: train(b, rng),
    }
    rows = {name: [_least_cpu_ms(fn, small), None] for name, fn in ours.items()}
    notes = {
        "decode (+ crop)": "ours: libjpeg-turbo into PIL's layout, the crop mapped in place; theirs: PIL, "
        'convert("RGB"), then the crop copied',
        "to the batch's format": "ours: uint8 RGB; theirs: ToTensor + Normalize, float32",
    }
    try:
        import torch
        from torchvision import transforms as T
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in small]
        crops = [p.crop(box) for p, box in zip(pil, boxes, strict=True)]
        resized = [c.resize(target, Image.BILINEAR) for c in crops]
        to_tensor, normalize = T.ToTensor(), T.Normalize(MEAN, STD)
        seeds = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), to_tensor, normalize])
        theirs = {
            "decode (+ crop)": lambda i, b: Image.open(io.BytesIO(b)).convert("RGB").crop(boxes[i]),
            "resize the crop (PIL, antialiased)": lambda i, b: crops[i].resize(target, Image.BILINEAR),
            "flip (every other image)": lambda i, b: i % 2 or resized[i].transpose(Image.FLIP_LEFT_RIGHT),
            "to the batch's format": lambda i, b: normalize(to_tensor(resized[i])),
            "the whole transform": lambda i, b: seeds(Image.open(io.BytesIO(b)).convert("RGB")),
        }
        for name, fn in theirs.items():
            rows[name][1] = _least_cpu_ms(fn, small)
    print(f"{'stage':38s} {'lightnets':>10s} {'torchvision':>12s}")
    for name, (a, b) in rows.items():
        theirs_ms = f"{b:12.3f}" if b is not None else f"{'':12s}"
        print(f"{name:38s} {a:10.3f} {theirs_ms}  {notes.get(name, '')}")

    # What the speed-ups that move pixels would buy, and how far they move them.
    def moved(pairs) -> str:
        d = np.concatenate([np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).ravel() for a, b in pairs])
        return (
            f"pixels move {d.mean():.2f} levels on average, 99th percentile {np.percentile(d, 99):.0f}, max {d.max()}"
        )

    if large:
        exact, reduced = transforms.TrainTransform(size, draft=False), transforms.TrainTransform(size)
        pairs = [
            (exact(b, np.random.default_rng(i)), reduced(b, np.random.default_rng(i))) for i, b in enumerate(large)
        ]
        share = np.mean([not np.array_equal(a, b) for a, b in pairs])
        print(
            f"DCT reduction (jpeg_draft), {len(large)} larger photos: {share:.0%} of their crops decoded at 1/2-1/8; "
            f"{moved(pairs)}"
        )
    for name, group in (("500 px", small), ("larger", large)):
        crops = [Image.open(io.BytesIO(b)).convert("RGB") for b in group]
        crops = [c.crop(transforms.random_resized_crop_box(*c.size, rng)) for c in crops]
        for gap in (1.0, 2.0):
            fast = [c.resize(target, Image.BILINEAR, reducing_gap=gap) for c in crops]
            share = np.mean([max(c.size[0] / size, c.size[1] / size) >= 2 * gap for c in crops])
            pairs = zip((c.resize(target, Image.BILINEAR) for c in crops), fast, strict=True)
            exact_ms = _least_cpu_ms(lambda i, c: c.resize(target, Image.BILINEAR), crops, 3)
            gap_ms = _least_cpu_ms(lambda i, c: c.resize(target, Image.BILINEAR, reducing_gap=gap), crops, 3)  # noqa: B023
            print(
                f"PIL reducing_gap={gap:g}, {name} crops decoded whole: {share:.0%} reduced first; resize {gap_ms:.2f} "
                f"ms against {exact_ms:.2f}; {moved(pairs)}"
            )
    sys.stdout.flush()


# --- against torchvision: one process per measurement ------------------------------------------------


def _torch_loader(folder: pathlib.Path, train: bool, size: int, batch: int, workers: int):
    """The PyTorch seeds' input pipeline (e.g. Ascend ModelZoo's MobileNetV2 main.py), unchanged."""
    import torch
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    normalize = T.Normalize(mean=list(MEAN), std=list(STD))
    if train:
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    else:
        tf = T.Compose([T.Resize(math.floor(size / 0.875)), T.CenterCrop(size), T.ToTensor(), normalize])
    dataset = tv_datasets.ImageFolder(str(folder), tf)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=train,
        num_workers=workers,
        pin_memory=False,
        persistent_workers=workers > 0,
        drop_last=train,
    )


def _our_passes(folder: pathlib.Path, train: bool, size: int, batch: int, workers: int):
    """`datasets.train_iterator` (endless) or one `eval_batches` pass per call, as the trainer runs them."""
    root, split = folder.parent, {"train": "train", "val": "validation"}[folder.name]
    source = datasets.create_source(f"folder:{root}", split, image_size=size)
    threads = 2  # configs/default.py: data_threads
    if train:
        it = datasets.train_iterator(
            source,
            global_batch_size=batch,
            seed=0,
            transform=transforms.TrainTransform(size),
            workers=workers,
            threads=threads,
            process_index=0,
            process_count=1,
        )
        return lambda: it, it
    tf = transforms.EvalTransform(size)
    return lambda: datasets.eval_batches(
        source, global_batch_size=batch, transform=tf, workers=workers, threads=threads
    ), None


def _epochs(loader):
    """Training batches across epochs, as a training loop reads them."""
    while True:
        yield from loader


def measure(
    framework: str, path: str, workers: int, folder: pathlib.Path, size: int, batch: int, seconds: float
) -> dict:
    """Images/s (and per CPU-second) of one pipeline, after start-up: the first batches of the
    training iterator, and the first batch of each evaluation pass, are not timed."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:workers])  # the workers inherit it
    train = path == "train"
    closing = None
    if framework == "torch":
        import torch

        torch.set_num_threads(1)
        loader = _torch_loader(folder, train, size, batch, workers)

        def passes():
            return _epochs(loader) if train else iter(loader)

    else:
        import jax

        jax.config.update("jax_platforms", "cpu")
        passes, closing = _our_passes(folder, train, size, batch, workers)
    # An evaluation pass's batches: the window ends at its last one, before the pipeline winds down.
    per_pass = math.inf if train else -(-len(_files(folder)) // batch)
    images, elapsed, cpu, first = 0, 0.0, 0.0, True
    try:
        while elapsed < seconds:
            it, received = passes(), 1
            for _ in range(3 if first and train else 1):  # workers start, files enter the page cache
                next(it)
            first = False
            start, cpu_start = time.perf_counter(), tree_cpu_seconds()
            while received < per_pass and time.perf_counter() - start + elapsed < seconds:
                b = next(it)
                received += 1
                images += _count(b)
            elapsed += time.perf_counter() - start
            cpu += tree_cpu_seconds() - cpu_start
            if not train and hasattr(it, "close"):
                it.close()
    finally:
        if closing is not None and hasattr(closing, "close"):
            closing.close()
    return {"rate": images / elapsed, "per_cpu_second": images / cpu, "images": images}


def _count(batch) -> int:
    if isinstance(batch, dict):  # ours: `valid` marks the padding of an evaluation's last batch
        return int(batch["valid"].sum()) if "valid" in batch else len(batch["label"])
    return len(batch[1])  # torchvision's (images, labels)


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.rglob("*.JPEG"))


def _run_measurement(framework: str, path: str, workers: int, folder: pathlib.Path) -> dict:
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        f"--measure={framework},{path},{workers},{folder}",
        f"--image_size={FLAGS.image_size}",
        f"--batch_size={FLAGS.batch_size}",
        f"--seconds={FLAGS.seconds}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600 + 4 * FLAGS.seconds)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise RuntimeError(f"{' '.join(argv[2:])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _spread(values) -> str:
    return f"{np.median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"


def compare(root: pathlib.Path) -> dict:
    """Ours and torchvision's, alternated in pairs of processes; prints the table, returns the rows."""
    size, batch = FLAGS.image_size, FLAGS.batch_size
    workers_list = [int(w) for w in FLAGS.compare_workers]
    rows = [("train", "mix", w, root / "train") for w in workers_list]
    rows += [("train", "500 px", workers_list[0], small_only(root) / "train")]
    # Evaluation over the training split's files: a longer pass than val/, the same mix.
    rows += [("eval", "mix", w, root / "train") for w in workers_list]
    print(
        f"\n## Against torchvision {_version('torchvision')} (ImageFolder + DataLoader), the same files, batch "
        f"{batch}, {size} px: {FLAGS.pairs} pairs of processes (ours, torchvision), {FLAGS.seconds:g} s each after "
        "warm-up; each process and its workers pinned to `workers` cores (the main process shares them); ours: "
        "data_threads 2 per worker; median (range) over the pairs"
    )
    print(
        f"{'path':6s} {'images':7s} {'workers':>7s} {'framework':12s} {'images/s per core':>24s} "
        f"{'per CPU-second':>24s} {'cores for ' + str(FLAGS.device_rate) + '/s':>20s}"
    )
    results = {}
    for path, images, workers, folder in rows:
        ours, theirs = [], []
        for _ in range(FLAGS.pairs):
            ours.append(_run_measurement("ours", path, workers, folder))
            theirs.append(_run_measurement("torch", path, workers, folder))
        results[(path, images, workers)] = (ours, theirs)
        for name, runs in (("lightnets", ours), ("torchvision", theirs)):
            per_core = [r["rate"] / workers for r in runs]
            per_cpu = [r["per_cpu_second"] for r in runs]
            cores = f"{FLAGS.device_rate / np.median(per_core):.0f} / {FLAGS.device_rate / np.median(per_cpu):.0f}"
            print(
                f"{path:6s} {images:7s} {workers:7d} {name:12s} {_spread(per_core):>24s} {_spread(per_cpu):>24s} "
                f"{cores:>20s}"
            )
        for label, key in (("per core", "rate"), ("per CPU-second", "per_cpu_second")):
            ratios = [a[key] / b[key] for a, b in zip(ours, theirs, strict=True)]
            verdict = (
                "no difference" if min(ratios) <= 1 <= max(ratios) else ("faster" if min(ratios) > 1 else "slower")
            )
            print(
                f"{'':23s} ratio lightnets/torchvision {label}, pair by pair: {np.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f}): {verdict}"
            )
        sys.stdout.flush()
    print(
        "(cores for the rate: from images/s per core / from per CPU-second. Per core is the rate over the "
        "pinned cores; on a shared machine a pipeline with more threads takes a larger share of them, so "
        "per CPU-second, which counts only the time each was given, is the fairer comparison there.)"
    )
    return results


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# --- equivalence: the same tensors from both --------------------------------------------------------


def _ours_normalised(images: np.ndarray) -> np.ndarray:
    """Our uint8 NHWC batch as the trainer's step sees it (`Normalize.on_device`), NCHW for the comparison."""
    import jax.numpy as jnp

    from lightnets import preprocessing

    normalise = preprocessing.Normalize(MEAN, STD)
    return np.asarray(normalise.on_device(jnp.asarray(images))).transpose(0, 3, 1, 2)


def equivalence(root: pathlib.Path) -> list[tuple[str, bool, str]]:
    """Checks that ours and torchvision's deliver the same tensors; (check, passed, detail) rows.

    Evaluation is deterministic: the same files in the same order (both sort classes and files),
    so pixels are compared. Training crops are random: the per-channel means over an epoch are
    compared, within 4 standard errors of the difference of two means of independent crops.
    """
    import torch

    size, batch = FLAGS.image_size, FLAGS.batch_size
    level = 1 / (255 * np.asarray(STD))  # one 8-bit level, in normalised units, per channel
    lo, hi = -np.asarray(MEAN) / np.asarray(STD), (1 - np.asarray(MEAN)) / np.asarray(STD)
    checks = []

    def common(name, ours, theirs):
        shape = ours.shape == theirs.shape == (len(ours), 3, size, size)
        checks.append((f"{name}: shape (N, 3, {size}, {size})", shape, f"{ours.shape} and {tuple(theirs.shape)}"))
        dtype = ours.dtype == theirs.dtype == np.float32
        checks.append((f"{name}: dtype float32", dtype, f"{ours.dtype} and {theirs.dtype}"))
        for label, x in (("ours", ours), ("torchvision", theirs)):
            inside = all(lo[c] - 1e-5 <= x[:, c].min() and x[:, c].max() <= hi[c] + 1e-5 for c in range(3))
            detail = f"[{x.min():.3f}, {x.max():.3f}] within [(0 - mean) / std, (1 - mean) / std]"
            checks.append((f"{name}: value range ({label})", inside, detail))

    # Evaluation: one batch of val/, the same images in the same order.
    n = min(batch, len(datasets.create_source(f"folder:{root}", "validation", image_size=size)))
    val = datasets.create_source(f"folder:{root}", "validation", image_size=size)
    ours_batch = next(iter(datasets.eval_batches(val, global_batch_size=n, transform=transforms.EvalTransform(size))))
    theirs_images, theirs_labels = next(iter(_torch_loader(root / "val", False, size, n, 0)))
    ours, theirs = _ours_normalised(ours_batch["image"]), theirs_images.numpy()
    common("eval", ours, theirs)
    checks.append(
        ("eval: labels (ImageFolder's order)", bool((ours_batch["label"] == theirs_labels.numpy()).all()), "")
    )
    if ours.shape == theirs.shape:
        levels = np.abs(ours - theirs) / level[None, :, None, None]
        means = np.abs(ours.mean(axis=(0, 2, 3)) - theirs.mean(axis=(0, 2, 3))) / level
        # Both resize filters keep the mean (PIL's weights sum to 1, as do the DCT reduction's), and
        # rounding moves a pixel by at most half a level either way: over a batch, the channel
        # means agree to well under half a level. Pixels differ by 1 level (rounding) where the
        # two decode alike, by more where ours decodes at a DCT reduction (larger photos, small sizes).
        ok = float(means.max()) <= 0.5
        detail = (
            f"pixels differ by {levels.mean():.2f} levels on average (median {np.median(levels):.0f}, "
            f"99th percentile {np.percentile(levels, 99):.0f}, max {levels.max():.0f}); channel means by "
            f"{means.max():.2f} levels at most"
        )
        checks.append(("eval: channel means over a batch within 0.5 levels", ok, detail))

    # Training: an epoch of each (different random crops of the same images).
    train = datasets.create_source(f"folder:{root}", "train", image_size=size)
    steps = max(1, len(train) // batch)
    it = datasets.train_iterator(
        train,
        global_batch_size=batch,
        seed=0,
        transform=transforms.TrainTransform(size),
        process_index=0,
        process_count=1,
    )
    ours = np.concatenate([_ours_normalised(next(it)["image"]) for _ in range(steps)])
    torch.manual_seed(0)
    theirs = np.concatenate(
        [b[0].numpy() for b in itertools.islice(iter(_torch_loader(root / "train", True, size, batch, 0)), steps)]
    )
    common("train", ours, theirs)
    if ours.shape == theirs.shape:
        a, b = ours.mean(axis=(2, 3)), theirs.mean(axis=(2, 3))  # per image and channel
        diff = np.abs(a.mean(0) - b.mean(0))
        bound = 4 * np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
        detail = ", ".join(f"{d / lv:.2f} <= {e / lv:.2f}" for d, e, lv in zip(diff, bound, level, strict=True))
        checks.append(("train: channel means over an epoch (levels, within 4 SE)", bool((diff <= bound).all()), detail))
    return checks


def _libjpeg_version() -> str:
    from PIL import features

    return features.version("libjpeg_turbo") or "?"


def main(argv) -> None:
    del argv
    size, batch = FLAGS.image_size, FLAGS.batch_size
    if FLAGS.measure:
        framework, path, workers, folder = FLAGS.measure.split(",", 3)
        result = measure(framework, path, int(workers), pathlib.Path(folder), size, batch, FLAGS.seconds)
        print("RESULT " + json.dumps(result), flush=True)
        return
    import jax

    jax.config.update("jax_platforms", "cpu")
    if FLAGS.compare_torch and _version("torchvision") == "not installed":
        from lightnets import cli

        cli.fail(
            "benchmarks/data_pipeline.py",
            "--compare_torch needs torch and torchvision (pip install -r requirements-dev.txt)",
        )
    workdir = pathlib.Path(FLAGS.workdir or tempfile.mkdtemp(prefix="lightnets-pipeline-bench-"))
    os.environ.setdefault("LIGHTNETS_CACHE_DIR", str(workdir / "cache"))
    root = workdir / "imagenet_like"
    if not root.exists():
        make_imagenet_like(root, FLAGS.images, large_fraction=FLAGS.large_fraction)
    import simplejpeg

    print(
        f"# benchmarks/data_pipeline.py, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, Pillow {Image.__version__} (libjpeg-turbo "
        f"{_libjpeg_version()}), simplejpeg {simplejpeg.__version__}, grain {_version('grain')}, torch "
        f"{_version('torch')}, torchvision {_version('torchvision')}; {describe_set(root)}; {size} px, batch {batch}"
    )
    if FLAGS.single_core:
        single_core(workdir, root, size, batch)
        stages(root, size)
    if FLAGS.compare_torch:
        compare(root)
        print("\n## The same tensors? (after our on-device normalisation; NHWC -> NCHW)")
        failed = 0
        for name, ok, detail in equivalence(root):
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
        if failed:
            sys.exit(f"{failed} equivalence checks failed")


if __name__ == "__main__":
    from lightnets import cli

    app.run(main, flags_parser=cli.absl_flags_parser("benchmarks/data_pipeline.py"))
