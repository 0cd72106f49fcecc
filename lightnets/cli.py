"""What every command does with a mistake: one line on stderr, a non-zero exit, no traceback.

    PROG = cli.prog("lightnets.convert")  # "lightnets-convert" when run by its entry point

    def main(argv=None) -> int:
        parser = cli.ArgumentParser(prog=PROG)  # has --debug
        ...

    def command() -> None:  # the entry point, pyproject.toml's [project.scripts]
        cli.run(main, PROG)

    if __name__ == "__main__":
        command()

A user's mistake (a wrong path, a bad value, a checkpoint that does not fit) reaches the user as
`PROG: error: MESSAGE` and exit status 2; `--debug` (or LIGHTNETS_DEBUG=1) shows the traceback
instead. Errors of any other type are bugs of ours and keep their traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import platform
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

# What a mistake of the user's raises: our own checks raise ValueError (CheckpointMismatchError
# is one) or a FileNotFoundError/FileExistsError; OSError covers unreadable, unwritable and full.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
EXIT_USER_ERROR = 2  # argparse's status for a usage error


def prog(module: str) -> str:
    """The command `module` as the user ran it: its entry point (`lightnets-convert` for
    `lightnets.convert`, pyproject.toml's `[project.scripts]`) or `python -m lightnets.convert`."""
    script = "lightnets-" + module.rsplit(".", 1)[-1]
    return script if pathlib.Path(sys.argv[0]).name == script else f"python -m {module}"


def debugging(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("LIGHTNETS_DEBUG", "") not in ("", "0")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with `--debug`, and its own usage errors in one line (argparse prints the usage first)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the traceback of an error (LIGHTNETS_DEBUG=1)")

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (--help lists the options)")


def fail(prog: str, message: str) -> NoReturn:
    """The one line a user's mistake gets, and exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def error_message(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1:  # KeyError's str() is the key's repr
        return str(error.args[0])
    return str(error).strip() or type(error).__name__


def run(main: Callable[[list[str] | None], int], prog: str, argv: list[str] | None = None) -> None:
    """Runs `main(argv)` and exits with its status; a user's mistake becomes one line on stderr."""
    quiet_libraries()
    prepare_cpu()
    try:
        status = main(argv)
    except USER_ERRORS as e:
        if debugging(argv):
            raise
        fail(prog, error_message(e))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status)


HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def absl_flags_parser(prog: str, load: Callable[[], object] | None = None) -> Callable[[list[str]], list[str]]:
    """absl's flag parsing (`app.run(main, flags_parser=...)`), with a mistake answered in one line.

    `load` runs right after parsing, e.g. to load the config file, so that its errors are flag errors.
    """
    from absl import flags

    def parse(argv: list[str]) -> list[str]:
        try:
            remaining = flags.FLAGS(argv)
            if load is not None:
                load()
            return remaining
        except SystemExit as e:
            # absl's --help prints the flags and exits 1, as if asking for help were an error.
            if e.code == 1 and any(a in HELP_FLAGS for a in argv[1:]):
                sys.exit(0)
            raise
        except Exception as e:
            if debugging(argv):
                raise
            fail(prog, flag_error(e, argv))

    return parse


def flag_error(error: BaseException, argv: list[str]) -> str:
    """The one line that says what was wrong with a command line, from absl's and ml_collections' errors."""
    root = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "configs/quickstart.py")
    text = str(root.args[0] if root.args else root)
    if isinstance(root, OSError) and "Failed loading config file" in str(root):
        path = config.split(":")[0]
        available = sorted(p.name for p in pathlib.Path(path).parent.glob("[!_]*.py"))
        return f"--config={config}: no such config file {path!r}" + (
            f"; beside it: {', '.join(available)}" if available else ""
        )
    if isinstance(root, AttributeError | KeyError):  # a misspelt --config.FIELD
        field = re.match(r"^\W*(\w+)", text)
        field = field.group(1) if field else text
        suggestion = re.search(r'Did you mean "(\w+)"', str(error))
        hint = f'; did you mean "{suggestion.group(1)}"?' if suggestion else " (configs/default.py lists the fields)"
        # A nested field (--config.progressive.stagez) by the path it was given as.
        given = [a[2:].split("=")[0] for a in argv if re.match(rf"--config\.(\w+\.)*{field}(=|$)", a)]
        path = given[0] if given else f"config.{field}"
        return f"--{path}: the config has no field {path.removeprefix('config.')!r}{hint}"
    first = str(error).splitlines()[0]
    if isinstance(root, ValueError) and root is not error and "Traceback" not in text:
        where = re.match(r"flag (--\S+): ", first)  # absl: "flag --config.batch_size=abc: ..."
        return f"{where.group(1) if where else '--config=' + config}: {text.splitlines()[0]}"
    return first.removeprefix("flag ")


# Notices that every run prints and that say nothing about this run: JAX looking for a TPU on a
# machine without one, orbax re-registering our array handler, TensorFlow's and oneDNN's start-up.
_HARMLESS = (
    "Unable to initialize backend",
    "Type handler registry",
    "oneDNN custom operations are on",
    "could not open file to read NUMA node",
    "This TensorFlow binary is optimized",
    "An NVIDIA GPU may be present on this machine",
)


class _QuietFilter(logging.Filter):
    """Keeps the known harmless notices and orbax's per-save INFO lines off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(notice in message for notice in _HARMLESS):
            return False
        return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


_FILTER = _QuietFilter()


def quiet_libraries() -> None:
    """Filters the harmless notices of JAX, orbax and TensorFlow; real warnings pass. Idempotent."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its oneDNN notice (TF only writes summaries here)
    for name in ("", "jax._src.xla_bridge", "absl", "orbax", "tensorflow"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


# glibc's malloc serves a request of more than 32 MiB (64 MiB from a thread other than the main
# one) with a fresh mmap, and unmaps it when it is freed. XLA's CPU backend allocates a step's
# temporaries as one block of hundreds of MiB each call, so every step faulted all of it in again
# (and the kernel zeroed it): 194,000 page faults per MobileNetV2 train step at batch 16, 128 px,
# most of a third of the step (docs/benchmarks.md). One arena that never unmaps nor trims keeps
# the pages from step to step. mallopt's parameter numbers, from glibc's malloc.h:
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# A user who chose their own allocator or its settings keeps them.
_ALLOCATOR_VARIABLES = (
    "LD_PRELOAD",
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)


def prepare_cpu() -> bool:
    """On a machine where JAX will compute on the CPU, and before it starts: keeps the memory
    freed between steps mapped (above). Called by `run` and main.py; does nothing once a JAX
    backend has started (its threads already hold their allocator arenas), where an accelerator
    plugin is installed or JAX_PLATFORMS names another platform first, off glibc, or where the
    user set the allocator's environment variables. Returns whether it changed anything.
    """
    if "jax" in sys.modules:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
    if not _jax_computes_on_cpu() or any(name in os.environ for name in _ALLOCATOR_VARIABLES):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return all(
        libc.mallopt(parameter, value) == 1
        for parameter, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    )


def _jax_computes_on_cpu() -> bool:
    """Whether JAX's default backend will be the CPU: JAX_PLATFORMS says so, or no accelerator
    plugin is installed (found where JAX looks: the jax_plugins namespace and entry points)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if importlib.util.find_spec("jax_plugins") is not None or importlib.util.find_spec("libtpu") is not None:
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")
