"""What the layout promises about imports, each checked in a fresh interpreter (as a user's first
import is): the training step builds where the input pipeline's libraries are absent, and the
deployment commands load a run without importing the training package."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The input pipeline's libraries, absent from a machine that only benchmarks the train step.
PIPELINE = ("grain", "clu", "simplejpeg", "tensorflow", "tensorflow_datasets", "input_pipeline")

# Makes the modules named `ABSENT` unimportable, as if not installed (a library that imports one
# optionally gets the ImportError it would get there).
BLOCKER = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (absent in this test)", name=name)
sys.meta_path.insert(0, Absent())
"""


def _python(code: str, absent: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter on one CPU device, with the modules `absent` unimportable."""
    program = f"ABSENT = {absent!r}\n{BLOCKER}\n{textwrap.dedent(code)}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_train_step_builds_and_runs_without_the_input_pipeline():
    code = """
    import numpy as np
    from configs import default
    from lightnets.training import train
    from lightnets.training.steps import build_model, build_steps

    config = default.get_config()
    config.update(model="mobilenet_v1_025", image_size=16, batch_size=4, dtype="float32", num_train_steps=10,
                  mixup=0.2, cutmix=1.0, reprob=0.25, ema_decay=0.9)
    model = build_model(config, num_classes=10)
    steps = build_steps(config, model, train.make_mesh(), steps_per_epoch=10)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8)
    state, metrics = steps.train_step(steps.state, images, np.arange(4, dtype=np.int32))
    print(int(state.step), float(metrics["loss"]))
    assert not [m for m in sys.modules if m.split(".")[0] in ABSENT]
    """
    result = _python(code, absent=PIPELINE)
    assert result.returncode == 0, result.stderr[-3000:]
    step, loss = result.stdout.split()
    assert step == "1" and np.isfinite(float(loss)), result.stdout
