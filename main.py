"""lightnets command line: train, evaluate or describe a configured network.

    python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart          # train (resumes)
    python main.py --config=configs/mobilenetv2.py:140 --workdir=/ckpt/mnv2_140     # a variant
    python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart --mode=eval
    python main.py --config=configs/mobilenetv2.py --mode=eval --checkpoint=/weights/mobilenet_v2_100
    python main.py --config=configs/efficientnetv2.py --mode=describe               # parameters, MACs

Any config field can be overridden, e.g. `--config.batch_size=256 --config.lr=0.1`; an unknown
field is an error. Multi-host: every process runs the same command with `--coordinator_address`,
`--num_processes` and `--process_id` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), or `--multihost` where JAX finds them itself (TPU pods, SLURM, Open MPI); see
the README.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lightnets import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard logs; a run resumes from the latest checkpoint here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "describe"], "Train (and evaluate), evaluate only, or describe.")
flags.DEFINE_string("checkpoint", None, "eval: a converter weights directory or a trainer workdir (default --workdir).")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"), "Multi-host: host:port.")
flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None, "Multi-host: processes.")
flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", -1)), "Multi-host: this process, 0-based.")
flags.DEFINE_bool("multihost", False, "Multi-host with the cluster's own discovery (TPU pod, SLURM, Open MPI).")
flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of its one-line message.")
PROG = "main.py"


def _fail(message: str) -> None:
    cli.fail(PROG, message)


def _define_config_flag() -> None:
    # ml_collections reads the --config.FIELD overrides while the flag is defined: a misspelt
    # field raises here, before absl parses anything.
    try:
        config_flags.DEFINE_config_file(
            "config", "configs/quickstart.py", "Configuration file[:variant].", lock_config=True
        )
    except Exception as e:
        if cli.debugging():
            raise
        _fail(cli.flag_error(e, sys.argv))


_define_config_flag()


def _initialize_distributed() -> None:
    import jax

    if FLAGS.coordinator_address:
        if FLAGS.num_processes is None or FLAGS.process_id < 0:
            _fail("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.multihost:
        jax.distributed.initialize()
    else:
        return
    logging.info(
        "Process %d of %d; %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {' '.join(argv[1:])!r}: every option is a --flag (main.py --help lists them)")
    cli.quiet_libraries()
    cli.prepare_cpu()  # before JAX starts its backend
    _initialize_distributed()  # before anything touches a device
    from lightnets import summary
    from lightnets.training import trainer

    config = FLAGS.config
    try:
        trainer.check_config(config)  # a bad config fails here, before anything is built or compiled
        if FLAGS.mode == "describe":
            summary.describe(config)
        elif FLAGS.mode == "eval":
            if not (FLAGS.checkpoint or FLAGS.workdir):
                _fail("--mode=eval needs --checkpoint or --workdir")
            trainer.evaluate(config, FLAGS.workdir, FLAGS.checkpoint)
        else:
            if not FLAGS.workdir:
                _fail("training needs --workdir (checkpoints and TensorBoard logs go there)")
            trainer.train_and_evaluate(config, FLAGS.workdir)
    except (*cli.USER_ERRORS, trainer.TrainingDiverged) as e:
        if FLAGS.debug:
            raise
        _fail(str(e))


if __name__ == "__main__":
    cli.quiet_libraries()
    app.run(main, flags_parser=cli.absl_flags_parser(PROG, load=lambda: FLAGS.config.keys()))
