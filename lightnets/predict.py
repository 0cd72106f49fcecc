"""Classifies images with a checkpoint: the top classes and their probabilities.

    python -m lightnets.predict --checkpoint /ckpt/run1 cat.jpg dog.png photos/
    python -m lightnets.predict --checkpoint /ckpt/mobilenet_v2_100 --top_k 3 *.jpg

The checkpoint is a trainer workdir (its latest step) or a weights directory (the converter's
output). Images are preprocessed as the trainer evaluates them (resize, centre crop, normalise;
for converted weights, as their reference evaluates) and classified in batches. A directory
stands for the images in it (recursively). An unreadable image is reported and skipped; the
exit status is then 1. Weights holding a nan or an inf are refused when loaded, and a model that
computes a non-finite probability is an error, never a "nan%" line.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline.transforms import CorruptImage
from lightnets import cli
from lightnets.deploy import inference
from lightnets.models.registry import forward

PROG = cli.prog("lightnets.predict")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclasses.dataclass
class Prediction:
    path: str
    classes: list[int]  # best first
    probabilities: list[float]
    names: list[str]


def expand(paths: list[str]) -> list[pathlib.Path]:
    """Files as given; directories as the image files under them, sorted."""
    found = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not found:
        raise ValueError(f"no images in {', '.join(paths)}")
    return found


def predict(
    loaded: inference.Loaded, paths: list[pathlib.Path], *, top_k: int = 5, batch_size: int = 32
) -> tuple[list[Prediction], dict[str, str]]:
    """The `top_k` classes of each readable image, and the unreadable ones with the reason."""
    prep, top_k = loaded.preprocessing, min(top_k, loaded.model.num_classes)
    predictions, failed = [], {}
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(prep.read(path))
                chunk.append(path)
            except (CorruptImage, OSError) as e:
                failed[str(path)] = str(e)
        if not chunk:
            continue
        # Padded to a whole batch: one compilation for every batch.
        batch = np.zeros((batch_size, *images[0].shape), np.uint8)
        batch[: len(images)] = images
        probs = np.asarray(jax.nn.softmax(forward(loaded.model, jnp.asarray(prep.normalize(batch))), axis=-1))
        probs = probs[: len(chunk)]
        broken = [str(path) for path, p in zip(chunk, probs, strict=True) if not np.isfinite(p).all()]
        if broken:
            raise ValueError(
                f"{loaded.description} computes non-finite probabilities (nan or inf) for "
                f"{', '.join(broken[:3])}: damaged weights, or values that overflow"
            )
        for path, p in zip(chunk, probs, strict=True):
            best = np.argsort(-p, kind="stable")[:top_k]
            names = [loaded.class_names[i] for i in best]
            predictions.append(Prediction(str(path), best.tolist(), p[best].tolist(), names))
    return predictions, failed


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories of images")
    parser.add_argument("--checkpoint", required=True, help="a trainer workdir or a weights directory")
    parser.add_argument("--top_k", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument(
        "--weights",
        choices=inference.WEIGHTS,
        default="auto",
        help="a trainer run's raw or EMA weights; auto: EMA when the run kept one",
    )
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top_k and --batch_size must be positive")
    paths = expand(args.images)
    loaded = inference.load(args.checkpoint, weights=args.weights)
    p = loaded.preprocessing
    print(f"{loaded.description}; {p.image_size} px, crop {p.crop_pct:g}, {p.interpolation}", file=sys.stderr)
    predictions, failed = predict(loaded, paths, top_k=args.top_k, batch_size=args.batch_size)
    for prediction in predictions:
        print(prediction.path)
        for rank, (c, prob, name) in enumerate(
            zip(prediction.classes, prediction.probabilities, prediction.names, strict=True), 1
        ):
            print(f"  {rank}. {prob:7.2%}  {name} ({c})")
    for path, reason in failed.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def command() -> None:
    """`lightnets-predict`, the entry point pyproject.toml installs: as `python -m lightnets.predict`."""
    cli.run(main, PROG)


if __name__ == "__main__":
    command()
