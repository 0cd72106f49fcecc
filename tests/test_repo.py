"""What a newcomer relies on: the README's commands are the ones that work, CI runs them."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
TEST_COMMAND = "python -m pytest -q"


def test_ci_runs_the_readme_test_command():
    assert f"pip install -r requirements-dev.txt -e . && {TEST_COMMAND}\n" in README
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == TEST_COMMAND


def test_readme_first_command_trains_the_quickstart():
    assert "pip install -r requirements.txt -e . && python main.py --config=configs/quickstart.py --workdir=" in README


def test_main_describes_the_configured_model():
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--mode=describe",
            "--config=configs/mobilenetv1.py",
            "--config.model=mobilenet_v1_025",
            "--config.image_size=64",
            "--config.dtype=float32",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "mobilenet_v1_025" in result.stdout and "470,072" in result.stdout
    assert re.search(r"logits \(\d+, 1000\) float32, finite: True", result.stdout)


def test_main_refuses_an_unknown_model_clearly():
    result = subprocess.run(
        [sys.executable, "main.py", "--config.model=shufflenet_v2_x1", "--workdir=/nonexistent/never/created"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Unknown model 'shufflenet_v2_x1'. Did you mean:" in result.stderr
    assert "shufflenet_v2_x1_0" in result.stderr
    assert "Traceback" not in result.stderr
