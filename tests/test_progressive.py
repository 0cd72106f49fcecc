"""Progressive learning: the stages' values (the paper's Algorithm 1), one compilation per stage,
the stages seen in the console and TensorBoard, an exact resume mid-stage, and refused schedules."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import efficientnetv2, quickstart
from input_pipeline import transforms
from lightnets.training import progressive, train, trainer
from tests.test_trainer import _checkpoints, _sigterm_at_batch, tiny

STAGE = 3  # steps per stage: synthetic:96 at batch 32 is 3 steps per epoch, the shortest stage allowed


def staged(**overrides):
    """`tiny()` in 3 stages of one epoch: 16, 24 and 32 px, RandAugment 5 to 9, Mixup 0 to 0.4,
    dropout 0 to 0.2 (mobilenet_v1_025's classifier dropout)."""
    c = tiny(dataset="synthetic:96", num_classes=10, num_train_steps=3 * STAGE, checkpoint_every_steps=2)
    c.progressive.update(stages=3, image_size=(16, 32), randaugment=(5, 9), mixup=(0.0, 0.4), dropout=(0.0, 0.2))
    c.update(**overrides)
    return c


def test_stage_values_follow_the_papers_algorithm():
    """Algorithm 1 of the paper: value_i = first + (last - first) * i / (M - 1); stage i holds the
    steps [i T / M, (i + 1) T / M) of T, as automl cuts them."""
    c = efficientnetv2.get_config("paper_s")
    stages = progressive.stages(c.progressive, total_steps=1000)
    assert [(s.start, s.end) for s in stages] == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert [s.values["image_size"] for s in stages] == [128, round(128 + 172 / 3), round(128 + 344 / 3), 300]
    assert [s.values["randaugment"] for s in stages] == pytest.approx([5, 5 + 10 / 3, 5 + 20 / 3, 15])
    assert [s.values["dropout"] for s in stages] == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    assert progressive.stage_at(stages, 249).index == 0 and progressive.stage_at(stages, 250).index == 1
    # The stage's RandAugment is the configured one at the stage's magnitude.
    ra = transforms.RandAugment(progressive.stage_config(c, stages[1]).randaugment)
    assert ra.magnitude == pytest.approx(5 + 10 / 3) and ra.max == transforms.RandAugment(c.randaugment).max
    assert progressive.stage_config(c, stages[1]).image_size == 185 and c.image_size == 384  # evaluation's


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_train_steps": 8}, r"stages of 2 steps, shorter than an epoch \(3 steps\): use fewer stages"),
        ({"randaugment": ""}, r"schedules the magnitude of config.randaugment, which is off"),
        (
            {"progressive.randaugment": (5, 15)},
            r"reaches magnitude 15, but 'rand-m9-mstd0.5' clips magnitudes at 10: "
            r"add -mmax15",
        ),
        ({"progressive.stages": 0}, r"progressive schedules \['dropout', 'image_size', .*progressive.stages is 0"),
        ({"progressive.stages": 1}, r"progressive.stages=1 needs at least 2 stages"),
        (
            {"progressive.image_size": (16.5, 32)},
            r"progressive.image_size=\(16.5, 32\) must be \(first, last\), "
            r"each a whole number of pixels",
        ),
        ({"progressive.dropout": (0.1,)}, r"progressive.dropout=\(0.1,\) must be \(first, last\)"),
        ({"model": "shufflenet_v2_x0_5"}, r"shufflenet_v2_x0_5 does not take the options \{'dropout': 0.0\}"),
    ],
)
def test_a_schedule_that_cannot_work_is_refused_before_training(override, message):
    c = staged()
    for field, value in override.items():
        if field.startswith("progressive."):
            c.progressive[field.split(".")[1]] = value
        else:
            c[field] = value
    with pytest.raises(ValueError, match=message):
        trainer.setup(c)


def test_a_misspelt_progressive_field_is_refused():
    c = staged()
    c.progressive.stagez = 3
    with pytest.raises(ValueError, match=r"does not define: \['progressive.stagez'\]"):
        trainer.check_config(c)


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory):
    """An uninterrupted progressive run, with the image sizes of every batch and every train step it
    jitted recorded."""
    workdir = tmp_path_factory.mktemp("progressive")
    mp = pytest.MonkeyPatch()
    sizes, jitted = [], []
    to_devices, jit = trainer._global, train.jit_train_step

    def recording_global(mesh, batch):
        sizes.append(batch["image"].shape[1])
        return to_devices(mesh, batch)

    def recording_jit(*args, **kwargs):
        jitted.append(jit(*args, **kwargs))
        return jitted[-1]

    def lowered(event, duration, fun_name="", **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowerings.append(fun_name)

    mp.setattr(trainer, "_global", recording_global)
    mp.setattr(train, "jit_train_step", recording_jit)
    lowerings = []
    jax.monitoring.register_event_duration_secs_listener(lowered)
    handler, root = _Capture(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        state = trainer.train_and_evaluate(staged(), str(workdir))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        jax.monitoring.unregister_event_duration_listener(lowered)
        mp.undo()
    return workdir, jax.device_get(state), sizes, jitted, lowerings, handler.text()


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def text(self):
        return "\n".join(self.lines)


def test_stages_train_at_their_size_and_compile_once_each(staged_run):
    _, _, sizes, jitted, lowerings, log = staged_run
    train_sizes = sizes[: 3 * STAGE]  # then the evaluation's batches, at the evaluation size
    assert train_sizes == [16] * STAGE + [24] * STAGE + [32] * STAGE
    assert set(sizes[3 * STAGE :]) == {16}
    # build_steps' own step (never called) and one per stage; each stage's lowered (and compiled,
    # or read from the compilation cache) once, the evaluation step once: every jitted "step" of the run.
    assert len(jitted) == 4 and jitted[0]._cache_size() == 0
    assert lowerings.count("jit(step)") == 3 + 1
    for line in (
        "stage 1/3 (steps 1-3): image_size 16, randaugment 5, mixup 0, dropout 0",
        "stage 2/3 (steps 4-6): image_size 24, randaugment 7, mixup 0.2, dropout 0.1",
        "stage 3/3 (steps 7-9): image_size 32, randaugment 9, mixup 0.4, dropout 0.2",
    ):
        assert f"Progressive learning: {line}" in log
    assert log.count("Compiling stage") == 3
    assert "stage 2/3 trained" in log and "s per epoch" in log


def test_tensorboard_shows_the_stages_values_as_curves(staged_run):
    from tensorboard.backend.event_processing import event_accumulator

    workdir = staged_run[0]
    events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()

    def curve(tag):
        return {e.step: float(_value(e)) for e in events.Tensors(tag)}

    # Logged every 2 steps and at the checkpoints: the value of the stage that trained that step.
    assert curve("progressive_image_size") == {2: 16, 4: 24, 6: 24, 8: 32, 9: 32}
    assert curve("progressive_stage") == {2: 1, 4: 2, 6: 2, 8: 3, 9: 3}
    assert curve("progressive_mixup") == pytest.approx({2: 0.0, 4: 0.2, 6: 0.2, 8: 0.4, 9: 0.4})


def _value(event):
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(event.tensor_proto)


def test_a_run_stopped_mid_stage_resumes_bit_for_bit(staged_run, tmp_path, monkeypatch, caplog):
    _, reference, *_ = staged_run
    _sigterm_at_batch(monkeypatch, 5)  # the second step of stage 2
    trainer.train_and_evaluate(staged(), str(tmp_path))
    monkeypatch.undo()
    assert _checkpoints(tmp_path) == [2, 4, 5]
    caplog.clear()  # the interrupted run's own lines, captured when absl already logs at INFO
    with caplog.at_level(logging.INFO):
        state = jax.device_get(trainer.train_and_evaluate(staged(), str(tmp_path)))
    assert "Resumed from" in caplog.text and "stage 2/3 (steps 4-6)" in caplog.text
    assert "stage 1/3" not in caplog.text
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state), strict=True):
        a, b = (jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in (a, b))
        np.testing.assert_array_equal(a, b)


def test_the_progressive_quickstart_and_recipes_are_valid_configs():
    for c in (quickstart.get_config("progressive"), *(efficientnetv2.get_config(f"paper_{v}") for v in "sml")):
        trainer.check_config(c)
        assert len(progressive.stages(c.progressive, 1000)) == 4


def test_main_takes_a_schedule_from_the_command_line_and_names_a_misspelt_one(tmp_path):
    from tests.test_trainer import main_py

    short = main_py(
        "--config=configs/quickstart.py",
        f"--workdir={tmp_path}",
        "--config.progressive.stages=3",
        "--config.progressive.image_size=(16, 32)",
        "--config.num_train_steps=5",
    )
    out = short.communicate(timeout=120)[0]
    assert short.returncode == 2 and "stages of 1 steps, shorter than an epoch (22 steps)" in out
    misspelt = main_py("--config=configs/quickstart.py", f"--workdir={tmp_path}", "--config.progressive.stagez=3")
    out = misspelt.communicate(timeout=120)[0]
    assert misspelt.returncode == 2 and "error: --config.progressive.stagez: the config has no field" in out
