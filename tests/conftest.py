"""Test set-up: an 8-device CPU mesh, the smallest variant of each family, and every file the
code under test writes kept in pytest's own temporary directory."""

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

# Before jax is imported: exercise an 8-device mesh on one CPU, as CI has no accelerator.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

# The smallest variant of each family: every behaviour test runs on these.
SMALLEST = (
    "mobilenet_v1_025",
    "mobilenet_v2_035",
    "shufflenet_v2_x0_5",
    "efficientnet_v2_b0_tf",
    "mobilenet_v3_small_100",
)


@pytest.fixture(params=SMALLEST)
def smallest(request):
    return request.param


def run_command(main, prog: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """A command's `main` as its user runs it (through `cli.run`): exit status, stdout, stderr."""
    from lightnets import cli

    with pytest.raises(SystemExit) as exit_:
        cli.run(main, prog, argv)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


# Makes the modules in ABSENT (and their submodules) unimportable, as if not installed: a library
# that imports one optionally gets the ImportError it would get there.
_ABSENT = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == a or name.startswith(a + ".") for a in ABSENT):
            raise ModuleNotFoundError(f"No module named {name!r} (absent in this test)", name=name)
sys.meta_path.insert(0, Absent())
"""


def run_python(code: str, *, absent: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter (as a user's first import is) on one CPU device, with the
    modules `absent` unimportable."""
    program = f"ABSENT = {absent!r}\n{_ABSENT}\n{textwrap.dedent(code)}"
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run(
        [sys.executable, "-c", program], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def digest(tree) -> str:
    """A sha256 of every array of `tree`, in its leaves' order: equal only for equal bits."""
    h = hashlib.sha256()
    for x in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def _writes_under_pytests_basetemp(tmp_path_factory):
    """What the code under test writes outside a test's own tmp_path goes into this session's
    basetemp (which pytest prunes), in this process and in main.py subprocesses alike:

    - JAX's compilation cache: runs of the trainer within a test compile the same steps, and a
      cache for the session compiles each once;
    - the folder listing cache (else the user's ~/.cache/lightnets);
    - Keras's settings file (else ~/.keras/keras.json, written when TensorFlow loads Keras);
    - temporary files and folders that libraries leave behind (TFDS an empty one in /tmp each
      time it looks for a data set's metadata online).
    """
    with pytest.MonkeyPatch.context() as patch:
        if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # a cache the user chose is kept
            cache = str(tmp_path_factory.mktemp("jax-cache"))
            patch.setenv("JAX_COMPILATION_CACHE_DIR", cache)
            jax.config.update("jax_compilation_cache_dir", cache)  # jax read the environment when imported
        patch.setenv("LIGHTNETS_CACHE_DIR", str(tmp_path_factory.mktemp("lightnets-cache")))
        patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras")))
        tmp = str(tmp_path_factory.mktemp("tmp"))
        patch.setenv("TMPDIR", tmp)
        patch.setattr(tempfile, "tempdir", tmp)
        yield
