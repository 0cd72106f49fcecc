"""cli.prepare_cpu: what it changes for a CPU run started fresh, and what it leaves alone."""

import os
import platform
import subprocess
import sys

import jax
import pytest

from lightnets import cli

# In a fresh interpreter, as XLA's CPU backend allocates a step's temporaries (a block of
# hundreds of MiB, from a thread of its own): prepare_cpu's answer, then the page faults of
# allocating, touching and freeing 256 MiB a second time. glibc's default maps such a block anew
# each time (65,536 faults of 4 KiB pages).
PROBE = """
import ctypes, resource, threading
from lightnets import cli
changed = cli.prepare_cpu()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def step(size=2**28):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
def steps():
    step()
    step()
thread = threading.Thread(target=steps)
thread.start()
thread.join()
print(changed, faults[-1])
"""

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's allocator"
)


def _probe(**env) -> tuple[bool, int]:
    environment = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "GLIBC_TUNABLES")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**environment, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    changed, faults = result.stdout.split()
    return changed == "True", int(faults)


@glibc_only
def test_prepare_cpu_keeps_freed_memory_mapped():
    changed, faults = _probe(JAX_PLATFORMS="cpu")  # cpu named: on a GPU machine an installed plugin would win
    assert changed
    assert faults < 2**28 // 4096 // 10  # under a tenth of the block's pages


@glibc_only
def test_prepare_cpu_leaves_the_users_allocator_settings_and_accelerators_alone():
    assert _probe(GLIBC_TUNABLES="glibc.malloc.check=0")[0] is False
    assert _probe(JAX_PLATFORMS="cuda")[0] is False


def test_prepare_cpu_does_nothing_once_jax_has_started():
    jax.devices()
    assert cli.prepare_cpu() is False
