"""CIFAR-10 as the MindSpore MobileNetV1 seed's users have it: the binary batches in its two
layouts, TFDS's cifar10, the seed's pad-and-crop augmentation, and its recipe run by main.py.

The binary files are written here, record by record as the format's description says (a label
byte, then the R, G and B planes of 32x32, row-major), from scikit-learn's digits upscaled, with
each channel a different picture, so that a plane or axis read in the wrong order shows.
"""

import io
import pathlib
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torchvision  # noqa: F401  before TensorFlow (the TFDS build): the other order crashes in triton's import
from PIL import Image

from configs import mobilenetv1
from input_pipeline import datasets, sources, transforms
from lightnets.training import trainer

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_FILE = 6  # records in each batch file


def _images(count: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` 32x32 RGB images and their labels: R a digit, G the next digit mirrored, B a ramp."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(offset, offset + count):
        r, g = (
            np.asarray(Image.fromarray((digits.images[j] * 15).astype(np.uint8)).resize((32, 32))) for j in (i, i + 1)
        )
        b = np.add.outer(np.arange(32), 3 * np.arange(32)).astype(np.uint8)
        out.append(np.stack([r, g[:, ::-1], b], axis=-1))
    return np.stack(out), digits.target[offset : offset + count].astype(np.uint8)


def _write_batch(path: pathlib.Path, images: np.ndarray, labels) -> None:
    with open(path, "wb") as f:
        for image, label in zip(images, labels, strict=True):
            f.write(bytes([int(label)]))
            for channel in range(3):
                f.write(image[:, :, channel].tobytes())  # one plane, row by row


def write_cifar10(root: pathlib.Path, *, verify_dir: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`root/cifar-10-batches-bin/` as the tarball has it, or with test_batch.bin moved to
    `root/cifar-10-verify-bin/` as the seed's README says. Returns all images and labels, train first."""
    batches = root / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    images, labels = _images(6 * PER_FILE, 0)
    for i in range(5):
        part = slice(i * PER_FILE, (i + 1) * PER_FILE)
        _write_batch(batches / f"data_batch_{i + 1}.bin", images[part], labels[part])
    test_dir = root / "cifar-10-verify-bin" if verify_dir else batches
    test_dir.mkdir(exist_ok=True)
    _write_batch(test_dir / "test_batch.bin", images[5 * PER_FILE :], labels[5 * PER_FILE :])
    (batches / "batches.meta.txt").write_text("\n".join(NAMES) + "\n\n")  # the tarball's ends in blank lines
    return images, labels


def _read_all(source) -> tuple[np.ndarray, np.ndarray]:
    examples = [source[i] for i in range(len(source))]
    return np.stack([e["image"] for e in examples]), np.asarray([e["label"] for e in examples])


# --- the binary batches ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["tarball", "seed_parent", "seed_batches_dir"])
def test_binary_batches_read_back_as_written_in_either_layout(tmp_path, layout):
    images, labels = write_cifar10(tmp_path, verify_dir=layout != "tarball")
    path = tmp_path / "cifar-10-batches-bin" if layout != "seed_parent" else tmp_path
    train = datasets.create_source(f"cifar10:{path}", "train", image_size=32)
    test = datasets.create_source(f"cifar10:{path}", "validation", image_size=32)
    assert (len(train), len(test)) == (5 * PER_FILE, PER_FILE)
    assert train.class_names == test.class_names == list(NAMES) and train.num_classes == 10
    for source, part in ((train, slice(0, 5 * PER_FILE)), (test, slice(5 * PER_FILE, None))):
        got_images, got_labels = _read_all(source)
        assert got_images.dtype == np.uint8 and got_images.shape[1:] == (32, 32, 3)
        np.testing.assert_array_equal(got_images, images[part])
        np.testing.assert_array_equal(got_labels, labels[part])
    # grain's worker processes get the source pickled: the paths, not the mapped files.
    clone = pickle.loads(pickle.dumps(train))
    np.testing.assert_array_equal(clone[7]["image"], images[7])
    assert len(pickle.dumps(train)) < 10_000


def test_class_names_come_from_batches_meta(tmp_path):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-bin" / "batches.meta.txt"
    meta.write_text("\n".join(n.upper() for n in NAMES) + "\n")
    assert datasets.create_source(f"cifar10:{tmp_path}", "train", image_size=32).class_names[0] == "AIRPLANE"
    meta.unlink()  # cifar-10-verify-bin/ has none, for instance: CIFAR-10's own names
    assert datasets.create_source(f"cifar10:{tmp_path}", "train", image_size=32).class_names == list(NAMES)


def _damage(root: pathlib.Path, kind: str) -> tuple[str, str]:
    """Damages the set in `root`; returns the split to open and what the error must say."""
    batches = root / "cifar-10-batches-bin"
    if kind == "missing":
        (batches / "data_batch_3.bin").unlink()
        return "train", r"missing .*cifar-10-batches-bin/data_batch_3\.bin"
    if kind == "truncated":
        path = batches / "data_batch_2.bin"
        path.write_bytes(path.read_bytes()[:-100])
        return "train", r"data_batch_2\.bin is 18338 bytes, not a whole number of 3073-byte records .*truncated"
    if kind == "empty":
        (batches / "data_batch_5.bin").write_bytes(b"")
        return "train", r"data_batch_5\.bin is 0 bytes"
    if kind == "label":
        path = batches / "data_batch_4.bin"
        data = bytearray(path.read_bytes())
        data[2 * sources.CIFAR10_RECORD] = 10  # the third record's label byte
        path.write_bytes(bytes(data))
        return "train", r"data_batch_4\.bin record 2 has label 10, not a class 0\.\.9"
    if kind == "no_test_batch":
        (batches / "test_batch.bin").unlink()
        return "validation", r"no test_batch\.bin for evaluation in any of .*cifar-10-verify-bin"
    if kind == "python_version":
        for f in batches.glob("data_batch_*.bin"):
            f.rename(f.with_suffix(""))
        return "train", r"missing .*the Python \(pickle\) version: use the binary one, cifar-10-binary\.tar\.gz"
    if kind == "meta":
        (batches / "batches.meta.txt").write_text("cat\ndog\n")
        return "train", r"batches\.meta\.txt names 2 classes, CIFAR-10 has 10"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "truncated", "empty", "label", "no_test_batch", "python_version", "meta"])
def test_damaged_or_wrong_files_are_one_line_errors_naming_the_file(tmp_path, kind):
    write_cifar10(tmp_path)
    split, message = _damage(tmp_path, kind)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        datasets.create_source(f"cifar10:{tmp_path}", split, image_size=32)
    assert "\n" not in str(error.value)


def test_a_damaged_file_stops_the_trainer_before_anything_is_built(tmp_path):
    write_cifar10(tmp_path, verify_dir=True)
    _damage(tmp_path, "truncated")
    config = mobilenetv1.get_config("cifar10")
    config.update(dataset=f"cifar10:{tmp_path}", model="mobilenet_v1_025", image_size=32)
    with pytest.raises(ValueError, match=r"data_batch_2\.bin is 18338 bytes"):
        trainer.setup(config)
    with pytest.raises(FileNotFoundError, match=r"cifar10:/no/such/dir: no such directory"):
        datasets.create_source("cifar10:/no/such/dir", "train", image_size=32)


# --- TFDS's cifar10 ----------------------------------------------------------------------------------


def test_tfds_cifar10_reads_the_same_images_labels_and_names(tmp_path, monkeypatch):
    """TFDS's own cifar10 builder, fed the binary files written here instead of its download: its
    reader agrees with ours, and `tfds:cifar10` trains through the pad-and-crop transform."""
    import tensorflow_datasets as tfds

    _, labels = write_cifar10(tmp_path / "download")
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", lambda self, url: tmp_path / "download")
    data_dir = str(tmp_path / "tfds")
    builder = tfds.builder("cifar10", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    ours = datasets.create_source(f"cifar10:{tmp_path / 'download'}", "validation", image_size=32)
    theirs = datasets.create_source("tfds:cifar10", "validation", image_size=32, data_dir=data_dir)
    assert theirs.class_names == ours.class_names == list(NAMES) and theirs.num_classes == 10
    assert len(theirs) == len(ours) == PER_FILE
    # TFDS stores each split in its own shuffled order: the same (image, label) pairs, in another order.
    expected = {ours[i]["image"].tobytes(): int(ours[i]["label"]) for i in range(PER_FILE)}
    assert len(expected) == PER_FILE
    found = {
        np.asarray(Image.open(io.BytesIO(theirs[i]["image"]))).tobytes(): int(theirs[i]["label"])
        for i in range(PER_FILE)
    }
    assert found == expected
    assert sorted(expected.values()) == sorted(labels[5 * PER_FILE :].tolist())
    train = datasets.create_source("tfds:cifar10", "train", image_size=32, data_dir=data_dir)
    transform = transforms.PadCropTransform(48, padding=4)
    batch = next(datasets.train_iterator(train, global_batch_size=8, seed=0, transform=transform, threads=1))
    assert batch["image"].shape == (8, 48, 48, 3) and batch["image"].dtype == np.uint8 and batch["skipped"] == 0


# --- the seed's transforms -----------------------------------------------------------------------------


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`image` moved by (dy, dx) pixels, black where nothing moved in: RandomCrop(32, padding 4)'s outputs."""
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_pad_crop_is_a_random_shift_of_at_most_the_padding_then_a_flip():
    image = _images(1, 3)[0][0]
    seen = set()
    transform = transforms.PadCropTransform(32, padding=4, hflip=0.0)
    for seed in range(1500):
        out = transform(image, np.random.default_rng(seed))
        shift = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if np.array_equal(out, _shifted(image, dy, dx))]
        assert len(shift) == 1, seed
        seen.add(shift[0])
    assert len(seen) == 81  # every offset of the 9 x 9 is drawn: one is missed with odds < 81 * (80/81)^1500 < 1e-6
    flipped = transforms.PadCropTransform(32, padding=0, hflip=1.0)(image, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    unchanged = transforms.PadCropTransform(32, padding=0, hflip=0.0)(image, np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged, image)


def _opencv_linear_resize(image: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR (what MindSpore's Resize calls), written out: source coordinate
    (x + 0.5) * scale - 0.5, clamped to the edge pixels, two-tap linear weights, rounded."""
    h, w = image.shape[:2]

    def taps(n_out, n_in):
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), x - lo

    y0, y1, fy = taps(size, h)
    x0, x1, fx = taps(size, w)
    img = image.astype(np.float64)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_the_resize_to_224_is_the_seeds_bilinear_and_evaluation_resizes_the_whole_image():
    image = _images(1, 5)[0][0]
    train = transforms.PadCropTransform(224, padding=0, hflip=0.0)(image, np.random.default_rng(0))
    reference = _opencv_linear_resize(image, 224)
    # Both round a weighted sum of two by two pixels to uint8, PIL in fixed point: at most one level apart.
    assert np.abs(train.astype(int) - reference).max() <= 1
    # The recipe's evaluation, crop_pct 1.0 of a square image: the same resize of the whole image.
    config = mobilenetv1.get_config("cifar10")
    _, eval_transform = trainer.data_transforms(config)
    np.testing.assert_array_equal(eval_transform(image), train)


def test_an_unknown_train_transform_or_a_negative_padding_is_a_clear_error():
    config = mobilenetv1.get_config("cifar10")
    config.train_transform = "random_crop"
    with pytest.raises(
        ValueError, match=r"train_transform 'random_crop' is not one of \['inception_crop', 'pad_crop'\]"
    ):
        trainer.check_config(config)
    config = mobilenetv1.get_config("cifar10")
    config.crop_padding = -1
    with pytest.raises(ValueError, match=r"crop_padding=-1 is out of range: it must be a whole number of pixels"):
        trainer.check_config(config)


# --- the recipe, as its users run it ---------------------------------------------------------------------


def test_main_trains_and_evaluates_the_cifar10_recipe_on_the_binary_batches(tmp_path):
    write_cifar10(tmp_path / "cifar10", verify_dir=True)
    workdir = tmp_path / "run"
    overrides = {
        "model": "mobilenet_v1_025",
        "image_size": 32,
        "batch_size": 8,
        "num_train_steps": 4,
        "log_every_steps": 2,
        "eval_every_epochs": 0,
        "data_workers": 0,
        "dtype": "float32",
    }
    run = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config=configs/mobilenetv1.py:cifar10",
            f"--workdir={workdir}",
            f"--config.dataset=cifar10:{tmp_path / 'cifar10'}",
            *(f"--config.{k}={v}" for k, v in overrides.items()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert re.search(r"Done: top-1 \d+\.\d+% at the end \(step 4\)", log), log[-3000:]
