"""What the layout promises about imports, each checked in a fresh interpreter: the training step
builds where the input pipeline's libraries are absent, and deployment needs no training package
(tests/test_trainer.py loads a run for inference with it absent)."""

import numpy as np

from tests.conftest import run_python

# The input pipeline's libraries, absent from a machine that only benchmarks the train step.
PIPELINE = ("grain", "clu", "simplejpeg", "tensorflow", "tensorflow_datasets", "input_pipeline")


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
    result = run_python(code, absent=PIPELINE)
    assert result.returncode == 0, result.stderr[-3000:]
    step, loss = result.stdout.split()
    assert step == "1" and np.isfinite(float(loss)), result.stdout


def test_predict_export_and_inference_import_no_training():
    code = """
    import lightnets.deploy.inference, lightnets.export, lightnets.predict
    print(sorted(m for m in sys.modules if m.startswith("lightnets.")))
    assert not [m for m in sys.modules if m.startswith("lightnets.training")]
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lightnets.deploy.inference" in result.stdout and "lightnets.training" not in result.stdout
