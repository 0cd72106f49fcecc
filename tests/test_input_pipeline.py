"""The input pipeline as the trainer uses it: sources, epochs, shards, seeds, saved state, bad data.

The data sets are built here: an image folder in the seeds' layout (with a corrupt and a
truncated file among the images) and a TFDS data set in ArrayRecord files. Every training image
is a flat colour that names it, so a batch says which examples it holds whatever the crop.
"""

import io
import json
import pathlib
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torchvision  # noqa: F401  before TensorFlow (the TFDS build): the other order crashes in triton's import
from PIL import Image

from input_pipeline import datasets, photos, prepare, sources, transforms
from lightnets import preprocessing
from lightnets.training import augment
from tests.conftest import run_command

CLASSES = ("n01440764", "n01443537", "n01484850")  # sorted: class index = position
PER_CLASS = 8
GOOD = len(CLASSES) * PER_CLASS
SIZE = 16


def colour(index: int) -> tuple[int, int, int]:
    """Example `index`'s flat colour: red steps of 8 name it after JPEG rounding."""
    return 8 * index + 16, 255 - 8 * index, 96


def identify(images: np.ndarray) -> list[int]:
    return [round((float(img[..., 0].mean()) - 16) / 8) for img in images]


def _jpeg(rgb, size=(40, 30), mode="RGB") -> bytes:
    image = Image.new("RGB", size, rgb)
    out = io.BytesIO()
    image.convert(mode).save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/train/<class>/*.JPEG with a corrupt and a truncated file, root/val/<class>/*."""
    root = tmp_path_factory.mktemp("imagenet")
    for c, name in enumerate(CLASSES):
        for split, count in (("train", PER_CLASS), ("val", 2)):
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in range(count):
                index = c * PER_CLASS + i
                (directory / f"{name}_{i}.JPEG").write_bytes(_jpeg(colour(index)))
    (root / "train" / CLASSES[1] / "corrupt.JPEG").write_bytes(b"<html>not found</html>")
    (root / "train" / CLASSES[2] / "truncated.JPEG").write_bytes(_jpeg((1, 2, 3), size=(400, 300))[:600])
    (root / "train" / CLASSES[0] / "notes.txt").write_text("not an image extension: ignored")
    return root


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNETS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A TFDS image-classification set, built to ArrayRecord files: the same flat colours."""
    import tensorflow_datasets as tfds

    class LightnetsColours(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
            features = tfds.features.FeaturesDict({"image": image, "label": tfds.features.ClassLabel(names=CLASSES)})
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(GOOD), "validation": self._generate_examples(6)}

        def _generate_examples(self, count):
            for i in range(count):
                yield i, {"image": np.full((30, 40, 3), colour(i), np.uint8), "label": i // PER_CLASS}

    data_dir = tmp_path_factory.mktemp("tfds")
    LightnetsColours(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


def _source(kind, folder, tfds_dir, split="train"):
    if kind == "folder":
        return datasets.create_source(f"folder:{folder}", split, image_size=SIZE)
    return datasets.create_source("tfds:lightnets_colours", split, image_size=SIZE, data_dir=tfds_dir)


def _batches(iterator, count):
    return [next(iterator) for _ in range(count)]


TRANSFORM = transforms.TrainTransform(SIZE, scale=(0.25, 1.0))


# --- sources ---------------------------------------------------------------------------------------


def test_folder_classes_are_sorted_folder_names_and_the_listing_is_cached(folder, monkeypatch):
    source = datasets.create_source(f"folder:{folder}", "train", image_size=SIZE)
    assert source.class_names == list(CLASSES) and len(source) == GOOD + 2
    assert all(
        source[i]["label"] == CLASSES.index(pathlib.Path(source[i]["name"]).parent.name) for i in range(len(source))
    )

    def no_listing(directory):
        raise AssertionError(f"listed {directory} again")

    monkeypatch.setattr(sources, "_list_class", no_listing)
    assert datasets.create_source(f"folder:{folder}", "train", image_size=SIZE).paths == source.paths
    monkeypatch.undo()
    # A file added to a class folder changes its modification time: that folder is listed anew.
    extra = folder / "train" / CLASSES[0] / "extra.JPEG"
    extra.write_bytes(_jpeg(colour(0)))
    try:
        assert len(datasets.create_source(f"folder:{folder}", "train", image_size=SIZE)) == GOOD + 3
    finally:
        extra.unlink()


def test_tfds_source_reads_encoded_images(tfds_dir):
    source = datasets.create_source("tfds:lightnets_colours", "train", image_size=SIZE, data_dir=tfds_dir)
    assert len(source) == GOOD and source.class_names == list(CLASSES)
    assert isinstance(source[5]["image"], bytes)  # decoded by our transforms, not TFDS
    images = np.stack([transforms.EvalTransform(SIZE)(source[i]["image"]) for i in range(len(source))])
    assert images.shape == (GOOD, SIZE, SIZE, 3) and sorted(identify(images)) == list(range(GOOD))
    assert [i // PER_CLASS for i in identify(images)] == [source[i]["label"] for i in range(len(source))]


@pytest.mark.parametrize("kind", ["folder", "tfds"])
def test_an_epoch_sees_every_example_once_and_processes_split_it(kind, folder, tfds_dir):
    source = _source(kind, folder, tfds_dir)
    # Global batches of 8 (two processes of 4); the folder's two unreadable files are left out.
    shares = []
    for p in range(2):
        it = datasets.train_iterator(
            source, global_batch_size=8, seed=3, transform=TRANSFORM, process_index=p, process_count=2
        )
        batches = _batches(it, 3)
        assert all(b["image"].shape == (4, SIZE, SIZE, 3) and b["image"].dtype == np.uint8 for b in batches)
        shares.append([i for b in batches for i in identify(b["image"])])
    one = datasets.train_iterator(
        source, global_batch_size=8, seed=3, transform=TRANSFORM, process_index=0, process_count=1
    )
    epoch = [i for b in _batches(one, 3) for i in identify(b["image"])]
    assert sorted(epoch) == list(range(GOOD))
    if kind == "tfds":  # no unreadable files: the two shares are exactly the epoch, disjoint
        assert sorted(shares[0] + shares[1]) == list(range(GOOD))
        # Each global batch of the one-process stream is the two processes' halves.
        assert sorted(shares[0][:4] + shares[1][:4]) == sorted(epoch[:8])
    else:
        assert not set(shares[0]) & set(shares[1][: GOOD // 2 - 2])


@pytest.mark.parametrize("kind", ["folder", "tfds"])
def test_the_same_seed_gives_the_same_batches_and_a_restored_iterator_continues(kind, folder, tfds_dir):
    source = _source(kind, folder, tfds_dir)

    def new(seed):
        return datasets.train_iterator(
            source, global_batch_size=8, seed=seed, transform=TRANSFORM, process_index=0, process_count=1
        )

    a, b = new(0), new(0)
    first = _batches(a, 4)
    for x, y in zip(first, _batches(b, 4), strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])  # the crops and flips too
    assert identify(_batches(new(1), 1)[0]["image"]) != identify(first[0]["image"])

    state = a.get_state()
    expected = _batches(a, 5)  # crosses into the second epoch
    restored = new(0)
    restored.set_state(json.loads(json.dumps(state)))  # as the checkpoint stores it
    for x, y in zip(expected, _batches(restored, 5), strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_worker_processes_decode_and_their_state_restores(folder):
    # Each worker batches every other example of the shuffled stream; batches alternate between them.
    source = datasets.create_source(f"folder:{folder}", "train", image_size=SIZE)

    def new():
        return datasets.train_iterator(
            source, global_batch_size=8, seed=0, transform=TRANSFORM, workers=2, process_index=0, process_count=1
        )

    it = new()
    try:
        first = _batches(it, 2)
        state = it.get_state()
        expected = _batches(it, 3)
    finally:
        it.close()
    assert all(len(set(identify(b["image"]))) == 8 for b in first + expected)
    again = new()
    try:
        again.set_state(state)
        for x, y in zip(expected, _batches(again, 3), strict=True):
            np.testing.assert_array_equal(x["image"], y["image"])
    finally:
        again.close()


def test_unreadable_files_are_skipped_and_counted(folder, caplog):
    source = datasets.create_source(f"folder:{folder}", "train", image_size=SIZE)
    it = datasets.train_iterator(
        source, global_batch_size=8, seed=0, transform=TRANSFORM, process_index=0, process_count=1
    )
    batches = _batches(it, 9)  # three epochs of readable images: every unreadable file was met
    assert sorted(i for b in batches[:3] for i in identify(b["image"])) == list(range(GOOD))
    skipped = sum(int(b["skipped"]) for b in batches)
    assert 4 <= skipped <= 6  # twice each in the first two epochs, maybe again in the third
    assert "corrupt.JPEG" in caplog.text and "truncated.JPEG" in caplog.text

    # Evaluation leaves them out too: the valid mask is 0 for them and for the padding.
    batches = list(datasets.eval_batches(source, global_batch_size=8, transform=transforms.EvalTransform(SIZE)))
    assert sum(int(b["skipped"]) for b in batches) == 2
    assert sum(float(b["valid"].sum()) for b in batches) == GOOD
    assert len(batches) == -(-(GOOD + 2) // 8)


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("folder:/no/such/imagenet", "folder:/no/such/imagenet: no such directory"),
        ("prepared:/no/such/copy", r"/no/such/copy/info.json"),
        ("tfds:lightnets_missing_set", "lightnets_missing_set"),
        ("imagenet", "unknown dataset 'imagenet'"),
    ],
)
def test_a_wrong_path_or_name_fails_at_once_naming_it(dataset, message):
    start = time.perf_counter()
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        datasets.create_source(dataset, "train", image_size=SIZE)
    assert time.perf_counter() - start < 1.0 or dataset.startswith("tfds:")  # TFDS's import alone is ~1 s


def test_missing_splits_and_empty_classes_are_clear_errors(tmp_path, tfds_dir):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.jpg").write_bytes(_jpeg((0, 0, 0)))
    with pytest.raises(FileNotFoundError, match=r"no validation split.*val"):
        datasets.create_source(f"folder:{tmp_path}", "validation", image_size=SIZE)
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folders with no images.*train/b"):
        datasets.create_source(f"folder:{tmp_path}", "train", image_size=SIZE)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        datasets.create_source("tfds:mnist", "train", image_size=SIZE, data_dir=str(tmp_path))


def test_a_symbolic_link_that_loops_is_an_error_naming_it(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "x.jpg").write_bytes(_jpeg((0, 0, 0)))
    (tmp_path / "train" / "b" / "up").symlink_to("..")  # a link to a parent folder: not walked, ignored
    (tmp_path / "train" / "b" / "up.jpg").symlink_to("..")
    assert len(datasets.create_source(f"folder:{tmp_path}", "train", image_size=SIZE)) == 2

    loops = [tmp_path / "train" / "a" / "self.jpg", tmp_path / "train" / "loop"]  # a file link, a class folder link
    for loop in loops:
        loop.symlink_to(loop.name)
        with pytest.raises(ValueError, match=f"cannot read {loop}: .* loops") as error:
            datasets.create_source(f"folder:{tmp_path}", "train", image_size=SIZE)
        assert "\n" not in str(error.value)
        loop.unlink()


def test_a_folder_of_unreadable_images_is_an_error_naming_it(tmp_path, caplog):
    for i in range(8):
        (tmp_path / "train" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / "a" / f"{i}.jpg").write_bytes(b"<html>not found</html>")
    source = datasets.create_source(f"folder:{tmp_path}", "train", image_size=SIZE)
    it = datasets.train_iterator(
        source, global_batch_size=8, seed=0, transform=TRANSFORM, process_index=0, process_count=1
    )
    # Two epochs hold a whole one: every image was tried (not 1,000 warnings first).
    with pytest.raises(ValueError, match=f"cannot read the images of {tmp_path / 'train'}: 16 in a row"):
        next(it)
    with pytest.raises(ValueError, match=f"cannot read the images of {tmp_path / 'train'}: none of the 8"):
        list(datasets.eval_batches(source, global_batch_size=8, transform=transforms.EvalTransform(SIZE)))


# --- transforms ----------------------------------------------------------------------------------


def test_grey_cmyk_palette_and_alpha_images_become_rgb():
    photo = photos.load_photos()["china"]
    for mode, fmt in (("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG")):
        out = io.BytesIO()
        Image.fromarray(photo).convert(mode).save(out, format=fmt)
        image = transforms.EvalTransform(32)(out.getvalue())
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, mode
        if mode in ("L", "LA"):
            assert np.array_equal(image[..., 0], image[..., 2])


def test_16_bit_grey_images_are_scaled_to_8_bits_not_clipped():
    values = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    png = io.BytesIO()
    Image.fromarray(values).save(png, format="PNG")  # PIL opens it as mode I;16
    pgm = b"P5 64 64 65535\n" + values.astype(">u2").tobytes()  # PIL opens it as mode I
    for data in (png.getvalue(), pgm):
        image = transforms.EvalTransform(64, crop_pct=1.0)(data)  # the whole image, not resized
        np.testing.assert_array_equal(image, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=-1))


@pytest.mark.parametrize("kind", ("PNG", "JPEG"))  # JPEGs are read by libjpeg-turbo, not PIL: the same rule
def test_a_decompression_bomb_is_reported_as_such_and_skipped(monkeypatch, kind):
    out = io.BytesIO()
    Image.new("RGB", (32, 32)).save(out, format=kind)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses over twice as many: 1,024 is a bomb here
    example = {"image": out.getvalue(), "label": 0, "name": "bomb"}
    for skipped in (
        datasets._Decode(transforms.EvalTransform(16))(example),
        datasets._Decode(transforms.TrainTransform(16))(example, np.random.default_rng(0)),
    ):
        assert skipped["skipped"] == "bomb" and "decompression bomb" in skipped["reason"]


@pytest.mark.parametrize("encoded", (False, True), ids=("pixels", "jpeg"))
def test_eval_and_crop_transforms_are_torchvisions(encoded):
    # From a JPEG, ours decodes with libjpeg-turbo into PIL's layout and resizes the crop where it
    # lies; torchvision decodes with PIL (libjpeg-turbo too) and crops a copy: the same pixels.
    from torchvision.transforms import v2

    photo = Image.fromarray(photos.load_photos()["china"]).resize((500, 375))
    if encoded:
        out = io.BytesIO()
        photo.save(out, format="JPEG", quality=90)
        data = out.getvalue()
        photo = Image.open(io.BytesIO(data)).convert("RGB")  # torchvision's loader
    else:
        data = np.asarray(photo)
    expected = np.asarray(v2.Compose([v2.Resize(256), v2.CenterCrop(224)])(photo))
    for draft in (False, True):  # 500x375 at 224 px: no DCT reduction applies, so draft changes nothing
        ours = transforms.EvalTransform(224, crop_pct=0.875, draft=draft)(data)
        assert ours.shape == (224, 224, 3) and np.abs(ours.astype(int) - expected).max() <= 1
    # The crop geometry of RandomResizedCrop: the same box, resized as torchvision does; the last
    # box touches the bottom-right corner (the decoder's buffer ends there).
    boxes = [transforms.random_resized_crop_box(500, 375, np.random.default_rng(seed)) for seed in range(5)]
    for left, top, right, bottom in [*boxes, (500 - 301, 375 - 177, 500, 375)]:
        crop = v2.functional.resized_crop(photo, top, left, bottom - top, right - left, [224, 224], antialias=True)
        region = transforms.Encoded(data)
        box = (left, top, right, bottom)
        ours = transforms.pixels(transforms._resize_box(region, box, (224, 224), Image.BILINEAR, draft=True, crop=True))
        assert ours.shape == (224, 224, 3) and np.abs(ours.astype(int) - np.asarray(crop)).max() <= 1


def test_jpeg_dct_reduction_is_by_a_power_of_two_and_keeps_the_crop_large_enough():
    # libjpeg-turbo's 3/8 ... 7/8 scales decode slower than the whole image: only 1/2, 1/4, 1/8.
    assert transforms._reduction(500, 375, (341, 256)) == 1  # 3/4 would do, but is not used
    assert transforms._reduction(1000, 750, (500, 375)) == 2
    assert transforms._reduction(1000, 750, (250, 188)) == 4  # 1/4: 250 x 188 (libjpeg rounds 187.5 up)
    assert transforms._reduction(1000, 750, (250, 189)) == 2
    assert transforms._reduction(4000, 3000, (10, 10)) == 8
    out = io.BytesIO()
    Image.fromarray(photos.load_photos()["china"]).save(out, format="JPEG", quality=90)  # 640x427
    decoded = transforms.Encoded(out.getvalue()).decode((160, 107))
    assert decoded.shape == (107, 160, 3)  # 1/4, rounded up as libjpeg does


def test_random_resized_crop_boxes_keep_to_the_scale_and_ratio():
    rng = np.random.default_rng(0)
    for width, height in ((500, 375), (375, 500), (64, 64), (1000, 100)):
        for _ in range(200):
            left, top, right, bottom = transforms.random_resized_crop_box(width, height, rng)
            w, h = right - left, bottom - top
            assert 0 <= left and right <= width and 0 <= top and bottom <= height
            if (width, height) != (1000, 100):  # there the fallback (a clamped centre crop) is common
                assert 0.07 <= w * h / (width * height) <= 1.0 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_jpeg_draft_decoding_stays_close_to_full_decoding():
    out = io.BytesIO()
    Image.fromarray(photos.load_photos()["china"]).save(out, format="JPEG", quality=90)
    full = transforms.EvalTransform(64, draft=False)(out.getvalue()).astype(float)
    fast = transforms.EvalTransform(64, draft=True)(out.getvalue()).astype(float)
    assert np.abs(full - fast).mean() < 3  # 427 px shorter side -> 73: decoded at 1/4 size


@pytest.mark.parametrize("name", (*transforms.RAND_TRANSFORMS, "PosterizeIncreasing", "SolarizeIncreasing"))
def test_randaugment_ops_are_timms(name, monkeypatch):
    from timm.data import auto_augment as timm_aa

    image = Image.fromarray(photos.load_photos()["china"]).resize((64, 48))
    hparams = {"translate_const": 100, "img_mean": preprocessing.IMAGENET.fill}
    for negate in (False, True):
        # timm flips its sign coin with random.random() > 0.5.
        monkeypatch.setattr(random, "random", lambda negate=negate: 1.0 if negate else 0.0)
        level = timm_aa.LEVEL_TO_ARG[name]
        args = level(7.3, hparams) if level is not None else ()
        expected = timm_aa.NAME_TO_OP[name](image, *args, fillcolor=hparams["img_mean"], resample=Image.BICUBIC)
        arg = transforms.level_to_arg(name, 7.3, negate)
        ours = transforms.apply_op(image, name, arg, fill=hparams["img_mean"], resample=Image.BICUBIC)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected), err_msg=f"{name} negate={negate}")


def test_randaugment_config_string():
    ra = transforms.RandAugment("rand-m9-mstd0.5")
    assert (ra.magnitude, ra.std, ra.num_layers, ra.prob, ra.ops) == (9, 0.5, 2, 0.5, transforms.RAND_TRANSFORMS)
    assert transforms.RandAugment("rand-m7-n3-inc1-mstd101").std == float("inf")
    with pytest.raises(ValueError, match="cannot read 'x9'"):
        transforms.RandAugment("rand-x9")
    image = Image.fromarray(photos.load_photos()["china"]).resize((64, 48))
    outs = [np.asarray(ra(image, np.random.default_rng(s))) for s in range(8)]
    assert sum(not np.array_equal(o, np.asarray(image)) for o in outs) >= 4  # P(no op applies) = 1/4


# --- the prepared copy -----------------------------------------------------------------------------


def test_prepare_writes_a_smaller_copy_the_loader_reads(folder, tmp_path):
    info = prepare.prepare(
        f"folder:{folder}", str(tmp_path / "copy"), max_shorter_side=20, quality=90, workers=1, examples_per_shard=10
    )
    assert info["splits"]["train"] == {"files": info["splits"]["train"]["files"], "num_examples": GOOD, "skipped": 2}
    assert len(info["splits"]["train"]["files"]) == 3
    source = datasets.create_source(f"prepared:{tmp_path / 'copy'}", "train", image_size=SIZE)
    assert len(source) == GOOD and source.class_names == list(CLASSES)
    images = [Image.open(io.BytesIO(source[i]["image"])) for i in range(len(source))]
    assert all(min(im.size) == 20 and im.format == "JPEG" for im in images)  # 40x30 -> 27x20
    it = datasets.train_iterator(
        source, global_batch_size=8, seed=0, transform=TRANSFORM, process_index=0, process_count=1
    )
    epoch = [i for b in _batches(it, 3) for i in identify(b["image"])]
    assert sorted(epoch) == list(range(GOOD))
    with pytest.raises(FileExistsError, match=r"info\.json"):
        prepare.prepare(f"folder:{folder}", str(tmp_path / "copy"))


def test_prepare_mistakes_are_one_line(tmp_path, capsys):
    assert run_command(prepare.main, prepare.PROG, ["--help"], capsys)[0] == 0
    for argv, message in [
        (["--dataset", "folder:/no/such/imagenet"], "folder:/no/such/imagenet: no such directory"),
        (["--dataset", "digits", "--splits", "train,test"], "choose among ('train', 'validation')"),
    ]:
        code, _, err = run_command(prepare.main, prepare.PROG, [*argv, "--output", str(tmp_path / "copy")], capsys)
        assert code == 2 and err.startswith(f"{prepare.PROG}: error: ") and message in err, err
        assert len(err.splitlines()) == 1 and not (tmp_path / "copy").exists()


# --- on the device: random erasing, Mixup, CutMix ---------------------------------------------------


def test_mixup_and_cutmix_pair_examples_within_each_device():
    # That they add no collective to the sharded step: test_trainer reads the compiled step's.
    x = jnp.arange(16, dtype=jnp.float32)[:, None, None, None] * jnp.ones((16, 8, 8, 3))
    labels = jnp.arange(16)
    mix = jax.jit(augment.BatchAugment(mixup_alpha=0.2, cutmix_alpha=1.0, groups=8))
    kinds = set()
    for seed in range(12):
        mixed, partner, lam = mix(jax.random.key(seed), x, labels)
        # Partners: the mirror image within each device's two examples.
        np.testing.assert_array_equal(partner, np.arange(16).reshape(8, 2)[:, ::-1].ravel())
        first, lam = np.asarray(mixed[0]), float(lam)  # example 0 (zeros) mixed with example 1 (ones)
        if np.allclose(first, first.flat[0]):  # Mixup: lam * 0 + (1 - lam) * 1 everywhere
            kinds.add("mixup")
            np.testing.assert_allclose(first, 1 - lam, atol=1e-6)
        else:  # CutMix: a box of ones, lambda corrected to the area left
            kinds.add("cutmix")
            assert set(np.unique(first)) == {0.0, 1.0} and first.mean() == pytest.approx(1 - lam)
    assert kinds == {"mixup", "cutmix"}


def test_random_erasing_erases_a_rectangle_of_the_right_size():
    x = jnp.full((200, 32, 32, 3), 7.0)
    erased = np.asarray(jax.jit(augment.random_erasing, static_argnums=2)(jax.random.key(0), x, 0.5))
    changed = (erased != 7.0).any(axis=-1)
    hit = changed.any(axis=(1, 2))
    assert 0.35 < hit.mean() < 0.65
    for mask in changed[hit][:20]:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        area = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert 0.015 * 32 * 32 <= area <= 0.35 * 32 * 32


def test_the_mixed_loss_is_timms_soft_target_cross_entropy():
    import torch
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    from lightnets.training import train

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 10)).astype(np.float32)
    labels = np.arange(8) % 10
    lam = 0.37
    targets = mixup_target(torch.tensor(labels), 10, lam=lam, smoothing=0.1)  # pairs with labels.flip(0)
    theirs = SoftTargetCrossEntropy()(torch.tensor(logits), targets).item()
    partner = np.asarray(augment._pair(jnp.asarray(labels), 1))
    ours = lam * train.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1) + (1 - lam) * train.cross_entropy(
        jnp.asarray(logits), jnp.asarray(partner), 0.1
    )
    np.testing.assert_allclose(float(ours), theirs, rtol=1e-5)


def test_a_reduced_decode_crop_at_the_images_edge_stays_inside_the_image():
    # Decoded at 1/2-1/8, the box is scaled by dw / width, and width * (dw / width) can round one
    # ulp above dw (87 * (44 / 87) = 44.00000000000001): a crop touching the right or bottom edge
    # must neither read past the decoded pixels (uninitialised memory) nor be refused.
    hits = 0
    for height in range(80, 100):
        dh = -(-height // transforms._reduction(1000, height, (20, 20)))  # the whole image's decode
        hits += height * (dh / height) > dh
        out = io.BytesIO()
        Image.new("RGB", (1000, height), (100, 100, 100)).save(out, format="JPEG", quality=95)
        region = transforms.Encoded(out.getvalue())
        for box in ((0, 0, 1000, height), (500, 0, 1000, height)):
            ours = transforms.pixels(
                transforms._resize_box(region, box, (20, 20), Image.BILINEAR, draft=True, crop=True)
            )
            assert ours.shape == (20, 20, 3) and np.abs(ours.astype(int) - 100).max() <= 1, (height, box)
    assert hits  # the rounding case is among these sizes
