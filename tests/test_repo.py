"""What a newcomer relies on: the README's commands are the ones that work, CI runs them."""

import pathlib
import re
import subprocess
import sys
import tomllib

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


# --- a fresh environment: every module imports, every command answers --help and mistakes ------

PACKAGES = ("lightnets", "input_pipeline", "configs")
COMMANDS = (
    ["main.py"],
    ["-m", "lightnets.convert"],
    ["-m", "lightnets.predict"],
    ["-m", "lightnets.export"],
    ["-m", "lightnets.summary"],
    ["-m", "input_pipeline.prepare"],
    *(["benchmarks/" + p.name] for p in sorted((ROOT / "benchmarks").glob("*.py"))),
)


def _run_all(argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Runs the commands side by side (each is mostly imports), each in its own interpreter."""
    processes = [
        subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    results = []
    for argv, process in zip(argvs, processes, strict=True):
        out, err = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
    return results


def test_every_module_imports():
    # In a fresh interpreter, as a new user's first import would be: a requirement missing from
    # requirements.txt fails here (CI installs into a new virtual environment).
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    )
    code = f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\nprint(len({modules!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == len(modules) > 30


def test_every_command_answers_help():
    for result in _run_all([[*argv, "--help"] for argv in COMMANDS]):
        assert result.returncode == 0, (result.args, result.stderr[-2000:])
        assert "usage" in (result.stdout + result.stderr).lower() or "flags:" in result.stdout, result.args


def test_entry_points_run_their_commands_under_their_own_name():
    # What `lightnets-convert` etc. run once pip has installed them (CI's editable install does):
    # the command's `main`, its usage and its one-line mistakes under the name the user typed.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"lightnets-{c}": f"lightnets.{c}:command" for c in ("convert", "predict", "export", "summary")}
    runs = []
    for name, target in scripts.items():
        module, function = target.split(":")
        for args in (["--help"], ["--no_such_flag"]):
            argv = [f"/venv/bin/{name}", *args]
            runs.append(["-c", f"import sys; sys.argv = {argv!r}; from {module} import {function}; {function}()"])
    results = iter(_run_all(runs))
    for name in scripts:
        help_, mistake = next(results), next(results)
        assert help_.returncode == 0 and help_.stdout.startswith(f"usage: {name} "), (name, help_.stderr[-2000:])
        (line,) = mistake.stderr.splitlines()
        assert mistake.returncode == 2 and line.startswith(f"{name}: error: "), (name, mistake.stderr[-2000:])


MISTAKES = (
    (["--config.batchsize=8"], "--config.batchsize: the config has no field 'batchsize'; did you mean \"batch_size\"?"),
    (["--config=configs/nosuch.py"], "--config=configs/nosuch.py: no such config file 'configs/nosuch.py'"),
    (["--config=configs/mobilenetv2.py:99"], "--config=configs/mobilenetv2.py:99: unknown mobilenet_v2 variant '99'"),
    (["--config.batch_size=many"], "--config.batch_size=many: invalid literal for int()"),
    (["--config.eval_batch_size=-1"], "eval_batch_size=-1 is out of range"),
    (["--config.log_every_steps=0"], "log_every_steps=0 is out of range: it must be a positive number of steps"),
    (["--mode=fit"], "--mode=fit: value should be one of <train|eval|describe>"),
    (["train"], "unexpected arguments 'train'"),
    (["--config.model=shufflenet_v2_x1"], "Unknown model 'shufflenet_v2_x1'. Did you mean: shufflenet_v2_x1_5"),
)


def test_main_answers_each_common_mistake_in_one_line(tmp_path):
    argvs = [["main.py", f"--workdir={tmp_path / 'never'}", *args] for args, _ in MISTAKES]
    for result, (_, message) in zip(_run_all(argvs), MISTAKES, strict=True):
        assert result.returncode == 2, (result.args, result.stderr)
        assert result.stderr.strip() == f"main.py: error: {message}" or (
            result.stderr.strip().startswith(f"main.py: error: {message}") and result.stderr.count("\n") == 1
        ), (result.args, result.stderr)
    assert not (tmp_path / "never").exists()


def test_readme_layout_names_every_module():
    layout = README.split("## Layout\n", 1)[1].split("```")[1]
    for path in sorted((ROOT / "lightnets").rglob("*.py")):
        if path.name == "__init__.py" and path.parent.name != "lightnets":
            assert f"  {path.parent.name}/" in layout, path.parent  # a sub-package, by its folder
        else:
            assert path.name in layout, path


def test_no_script_shadows_a_package():
    # A script's directory comes first on sys.path when it runs: benchmarks/input_pipeline.py once
    # hid the input_pipeline package from every benchmark.
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} | {p.stem for p in ROOT.glob("*.py")}
    assert not scripts & set(PACKAGES), scripts & set(PACKAGES)
