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
import time

from absl import logging
from PIL import Image

from input_pipeline import datasets, sources, transforms


def reencode(data: bytes, max_shorter_side: int, quality: int) -> bytes:
    """One image, decoded (at a reduced size where libjpeg can), downsized with antialiasing so that
    its shorter side is at most `max_shorter_side`, and encoded as RGB JPEG."""
    encoded = transforms.Encoded(data)
    try:
        width, height = encoded.size
        scale = min(1.0, max_shorter_side / min(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = encoded.decode(size if scale < 1 else None)  # DCT reduction to >= size
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        if image.size != size:
            image = image.resize(size, Image.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
        return out.getvalue()
    except Exception as e:
        raise transforms.CorruptImage(str(e)) from None


PROG = "python -m input_pipeline.prepare"
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


def prepare(
    dataset: str,
    output: str,
    *,
    max_shorter_side: int = 256,
    quality: int = 90,
    splits=("train", "validation"),
    workers: int = 0,
    examples_per_shard: int = 20_000,
    data_dir: str | None = None,
) -> dict:
    """Writes the copy and returns its info (also in `output/info.json`)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    unknown = [s for s in splits if s not in datasets.SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits {list(splits)}: choose among {datasets.SPLITS}")
    if min(max_shorter_side, examples_per_shard) < 1 or not 1 <= quality <= 100:
        raise ValueError("max_shorter_side and examples_per_shard must be positive, quality in 1..100")
    out = pathlib.Path(output)
    if (out / sources.INFO_FILE).exists():
        raise FileExistsError(f"{out / sources.INFO_FILE} exists: {out} holds a prepared copy; choose another --output")
    # Every split's source before anything is written: a wrong path or a missing split fails at once.
    split_sources = {split: datasets.create_source(dataset, split, image_size=1, data_dir=data_dir) for split in splits}
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    info = {"source": dataset, "max_shorter_side": max_shorter_side, "quality": quality, "splits": {}}
    for split, source in split_sources.items():
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
        logging.info(
            "%s: wrote %d images in %.0f s, skipped %d", split, written, time.perf_counter() - started, len(skipped)
        )
    (out / sources.INFO_FILE).write_text(json.dumps(info, indent=1))
    return info


def main(argv: list[str] | None = None) -> int:
    from lightnets import cli  # here, not at the top: the worker processes import this module

    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="source to copy: folder:PATH, tfds:NAME or prepared:PATH")
    parser.add_argument("--output", required=True, help="directory to write (must not hold a prepared copy already)")
    parser.add_argument(
        "--max_shorter_side",
        type=int,
        default=256,
        help="images whose shorter side is longer are downsized to it (default 256)",
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images (default 90)")
    parser.add_argument(
        "--splits",
        type=lambda s: s.split(","),
        default=list(datasets.SPLITS),
        help="splits to copy, comma-separated (default train,validation)",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes re-encoding images; 0: one per core")
    parser.add_argument("--examples_per_shard", type=int, default=20_000, help="records per ArrayRecord file")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir for tfds: sources")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)  # the progress lines
    prepare(
        args.dataset,
        args.output,
        max_shorter_side=args.max_shorter_side,
        quality=args.quality,
        splits=args.splits,
        workers=args.workers,
        examples_per_shard=args.examples_per_shard,
        data_dir=args.data_dir,
    )
    return 0


if __name__ == "__main__":
    from lightnets import cli

    cli.run(main, PROG)
