"""Writes a re-encoded copy of a data set, shorter side capped, as ArrayRecord: `prepared:DIR`.

    python -m input_pipeline.prepare --dataset=folder:/data/imagenet --output=/data/imagenet-256 \\
        --max_shorter_side=256 --quality=90 --workers=16

Full-size ImageNet JPEGs (about 400x350 on average) decode at a few hundred images/s per core,
so a host feeds a fast GPU only with many cores. A copy whose shorter side is capped decodes
several times faster and is read by the same loader (`--config.dataset=prepared:DIR`); see the
README for what it costs in accuracy and gains in speed. Images already smaller are re-encoded
as they are (so every record is a JPEG); unreadable ones are left out and counted. The order of
the source is kept (the loader shuffles), and the splits' shards and class names go in
`DIR/info.json`.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time

from absl import app, flags, logging
from PIL import Image

from input_pipeline import datasets, sources, transforms


def reencode(data: bytes, max_shorter_side: int, quality: int) -> bytes:
    """One image, decoded (at a reduced size where libjpeg can), downsized with antialiasing so that
    its shorter side is at most `max_shorter_side`, and encoded as RGB JPEG."""
    image = transforms.open_image(data)
    try:
        width, height = image.size
        scale = min(1.0, max_shorter_side / min(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = transforms.decode(image, data, size if scale < 1 else None)  # DCT reduction to >= size
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        if image.size != size:
            image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        return out.getvalue()
    except Exception as e:
        raise transforms.CorruptImage(str(e)) from None


_worker_source = None


def _init_worker(dataset: str, split: str, data_dir: str | None) -> None:
    global _worker_source
    _worker_source = datasets.create_source(dataset, split, image_size=1, data_dir=data_dir)


def _convert(args: tuple[int, int, int]) -> tuple[int, int, bytes | None, str]:
    index, max_side, quality = args
    example = _worker_source[index]
    image = example["image"]
    if not isinstance(image, bytes):  # digits, synthetic: arrays
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        image = buffer.getvalue()
    try:
        return index, int(example["label"]), reencode(image, max_side, quality), ""
    except transforms.CorruptImage as e:
        return index, int(example["label"]), None, f"{example.get('name', index)}: {e}"


def prepare(dataset: str, output: str, *, max_shorter_side: int = 256, quality: int = 90,
            splits=("train", "validation"), workers: int = 0, examples_per_shard: int = 20_000,
            data_dir: str | None = None) -> dict:  # fmt: skip
    """Writes the copy and returns its info (also in `output/info.json`)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out = pathlib.Path(output)
    if (out / sources.INFO_FILE).exists():
        raise FileExistsError(f"{out / sources.INFO_FILE} exists: {out} holds a prepared copy; choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    info = {"source": dataset, "max_shorter_side": max_shorter_side, "quality": quality, "splits": {}}
    for split in splits:
        source = datasets.create_source(dataset, split, image_size=1, data_dir=data_dir)
        info["class_names"] = list(source.class_names)
        n = len(source)
        shards = max(1, math.ceil(n / examples_per_shard))
        files = [f"{split}.array_record-{i:05d}-of-{shards:05d}" for i in range(shards)]
        written, skipped, started = 0, [], time.perf_counter()
        # spawn: workers must not inherit JAX's or TensorFlow's threads.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, _init_worker, (dataset, split, data_dir)) as pool:
            writer, shard = None, -1
            tasks = ((i, max_shorter_side, quality) for i in range(n))
            for index, label, data, error in pool.imap(_convert, tasks, chunksize=64):
                if index * shards // n != shard:  # next shard, by source position
                    if writer is not None:
                        writer.close()
                    shard = index * shards // n
                    writer = ArrayRecordWriter(str(out / files[shard]), "group_size:1")
                if data is None:
                    skipped.append(error)
                    logging.warning("Skipping %s", error)
                    continue
                writer.write(sources.encode_record(label, data))
                written += 1
                if written % 10_000 == 0:
                    rate = written / (time.perf_counter() - started)
                    logging.info("%s: %d/%d images, %.0f images/s", split, written, n, rate)
            if writer is not None:
                writer.close()
        info["splits"][split] = {"files": files, "num_examples": written, "skipped": len(skipped)}
        logging.info("%s: wrote %d images in %.0f s, skipped %d", split, written, time.perf_counter() - started,
                     len(skipped))  # fmt: skip
    (out / sources.INFO_FILE).write_text(json.dumps(info, indent=1))
    return info


def _define_flags() -> None:
    """The command line; defined only when run as a program, so importing this module adds no flags."""
    flags.DEFINE_string("dataset", None, "source to copy: folder:PATH, tfds:NAME or prepared:PATH", required=True)
    flags.DEFINE_string("output", None, "directory to write (must not hold a prepared copy already)", required=True)
    flags.DEFINE_integer("max_shorter_side", 256, "images whose shorter side is longer are downsized to it")
    flags.DEFINE_integer("quality", 90, "JPEG quality of the re-encoded images")
    flags.DEFINE_list("splits", ["train", "validation"], "splits to copy")
    flags.DEFINE_integer("workers", 0, "processes re-encoding images; 0: one per core")
    flags.DEFINE_integer("examples_per_shard", 20_000, "records per ArrayRecord file")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir for tfds: sources")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    try:
        prepare(f.dataset, f.output, max_shorter_side=f.max_shorter_side, quality=f.quality, splits=f.splits,
                workers=f.workers, examples_per_shard=f.examples_per_shard, data_dir=f.data_dir)  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    from lightnets import cli

    _define_flags()
    app.run(main, flags_parser=cli.absl_flags_parser("python -m input_pipeline.prepare"))
