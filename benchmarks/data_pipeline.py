"""Input pipeline throughput on ImageNet-like JPEGs: images/s per core, training and evaluation path.

    PYTHONPATH=. python benchmarks/data_pipeline.py [--images=512] [--device_rate=16000]

Makes its own data: crops of the photos that ship with scikit-learn and scikit-image, resized to
500x375 or 375x500 (ImageNet's typical size) and saved as JPEG quality 90 in the seeds' folder
layout. Then it measures, each on one thread of one core:

1. decoding alone: PIL, PIL with draft (DCT-domain reduction), simplejpeg and OpenCV if installed;
2. the trainer's training path (`datasets.train_iterator`: read, decode, Inception crop, flip,
   batch), without and with RandAugment, and the evaluation path (resize, centre crop);
3. the same paths on a prepared copy (`python -m input_pipeline.prepare`, shorter side capped);
4. the training path with grain worker processes, one per core, to show the scaling.

and prints how many host cores a device running at `--device_rate` images/s needs.
"""

from __future__ import annotations

import io
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from input_pipeline import datasets, photos, prepare, transforms

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 512, "ImageNet-like JPEGs to make")
flags.DEFINE_integer("image_size", 224, "training and evaluation resolution")
flags.DEFINE_integer("batch_size", 64, "batch size of the pipeline runs")
flags.DEFINE_integer("device_rate", 16000, "a device's training images/s, for the cores-needed estimate")
flags.DEFINE_list("prepared_sides", ["160", "192", "256"], "shorter sides of the prepared copies to measure")
flags.DEFINE_string("workdir", None, "where to write the images (default: a temporary directory)")


def make_imagenet_like(root: pathlib.Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs of 500x375 (or 375x500), quality 90, in 10 class folders, from the shipped photos."""
    rng = np.random.default_rng(seed)
    pool = list(photos.load_photos().values())
    for split, n in (("train", count), ("val", max(count // 4, 10))):
        for i in range(n):
            photo = pool[int(rng.integers(len(pool)))]
            h, w = photo.shape[:2]
            portrait = rng.random() < 0.25
            aspect = 375 / 500 if not portrait else 500 / 375
            ch = int(min(h, w * aspect) * rng.uniform(0.6, 1.0))
            cw = int(ch / aspect)
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            image = Image.fromarray(photo[top : top + ch, left : left + cw]).resize(
                (375, 500) if portrait else (500, 375), Image.BICUBIC
            )
            directory = root / split / f"class{i % 10:02d}"
            directory.mkdir(parents=True, exist_ok=True)
            image.save(directory / f"{split}_{i:05d}.JPEG", quality=90)


def rate(fn, items, repeat: int = 5) -> list[float]:
    """Items per second of `fn` over `items`, in `repeat` passes."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        rates.append(len(items) / (time.perf_counter() - start))
    return rates


def decoders(blobs: list[bytes], size: int) -> dict[str, list[float]]:
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
        results[f"simplejpeg min_height/width {size}"] = rate(
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


def pipeline_rate(source, *, train: bool, transform, batch_size: int, workers: int = 0, batches: int = 0):
    """Images/s of the trainer's own iterators (threads=1: one core, unless `workers`) in 5 windows."""
    batches = batches or max(2, len(source) // batch_size)
    rates = []
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
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            rates.append(batches * batch_size / (time.perf_counter() - start))
        if hasattr(it, "close"):
            it.close()
        return rates
    for _ in range(5):
        start = time.perf_counter()
        batches = datasets.eval_batches(source, global_batch_size=batch_size, transform=transform, threads=1)
        count = sum(len(b["label"]) for b in batches)
        rates.append(count / (time.perf_counter() - start))
    return rates


def main(argv) -> None:
    del argv
    import jax

    jax.config.update("jax_platforms", "cpu")
    size, batch = FLAGS.image_size, FLAGS.batch_size
    workdir = pathlib.Path(FLAGS.workdir or tempfile.mkdtemp(prefix="lightnets-pipeline-bench-"))
    os.environ.setdefault("LIGHTNETS_CACHE_DIR", str(workdir / "cache"))
    root = workdir / "imagenet_like"
    if not root.exists():
        make_imagenet_like(root, FLAGS.images)
    source = datasets.create_source(f"folder:{root}", "train", image_size=size)
    val = datasets.create_source(f"folder:{root}", "validation", image_size=size)
    blobs = [source[i]["image"] for i in range(len(source))]
    print(
        f"# {len(source)} train / {len(val)} val JPEGs, 500x375 q90, {np.mean([len(b) for b in blobs]) / 1e3:.0f} kB "
        f"on average; one thread of one core unless said; {os.cpu_count()} cores here"
    )

    rows = []
    for name, value in decoders(blobs, size).items():
        rows.append(("decode only", name, value))
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
            pipeline_rate(
                source,
                train=True,
                transform=train_tf,
                batch_size=batch,
                workers=cores,
                batches=max(8, 4 * len(source) // batch),
            ),
        )
    )

    # This machine is shared: the median says what to expect, the best what a quiet core does.
    print(f"{'':20s} {'':38s} {'median/s':>9s} {'best/s':>8s} {'cores for ' + str(FLAGS.device_rate) + '/s':>18s}")
    for group, name, rates in rows:
        median, best = float(np.median(rates)), max(rates)
        per_core = median / cores if group.endswith("workers") else median
        print(f"{group:20s} {name:38s} {median:9.0f} {best:8.0f} {FLAGS.device_rate / per_core:18.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    from lightnets import cli

    app.run(main, flags_parser=cli.absl_flags_parser("benchmarks/data_pipeline.py"))
