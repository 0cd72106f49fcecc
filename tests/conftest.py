"""Test set-up: an 8-device CPU mesh, and the smallest variant of each family."""

import os
import tempfile

# Before jax is imported: exercise an 8-device mesh on one CPU, as CI has no accelerator.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runs of the trainer within a test (in this process and in main.py subprocesses) compile the
# same steps: a cache for this session compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lightnets-test-jax-cache-"))

import pytest

# The smallest variant of each family: every behaviour test runs on these.
SMALLEST = ("mobilenet_v1_025", "mobilenet_v2_035", "shufflenet_v2_x0_5", "efficientnet_v2_b0_tf")


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
