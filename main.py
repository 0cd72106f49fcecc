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

import logging as pylogging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (TensorBoard writer) start-up chatter

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/quickstart.py", "Configuration file[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard logs; a run resumes from the latest checkpoint here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "describe"], "Train (and evaluate), evaluate only, or describe.")
flags.DEFINE_string("checkpoint", None, "eval: a converter weights directory or a trainer workdir (default --workdir).")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"), "Multi-host: host:port.")
flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None, "Multi-host: processes.")
flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", -1)), "Multi-host: this process, 0-based.")
flags.DEFINE_bool("multihost", False, "Multi-host with the cluster's own discovery (TPU pod, SLURM, Open MPI).")


def _initialize_distributed() -> None:
    import jax

    if FLAGS.coordinator_address:
        if FLAGS.num_processes is None or FLAGS.process_id < 0:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.multihost:
        jax.distributed.initialize()
    else:
        return
    logging.info("Process %d of %d; %d local of %d devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())  # fmt: skip


class _QuietLibraries(pylogging.Filter):
    """Keeps orbax's per-save INFO lines (dozens per checkpoint) off the console; warnings pass."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    _initialize_distributed()  # before anything touches a device
    from lightnets import summary, trainer

    config = FLAGS.config
    try:
        trainer.check_config(config)  # a bad config fails here, before anything is built or compiled
        if FLAGS.mode == "describe":
            summary.describe(config)
        elif FLAGS.mode == "eval":
            if not (FLAGS.checkpoint or FLAGS.workdir):
                raise app.UsageError("--mode=eval needs --checkpoint or --workdir")
            trainer.evaluate(config, FLAGS.workdir, FLAGS.checkpoint)
        else:
            if not FLAGS.workdir:
                raise app.UsageError("training needs --workdir (checkpoints and TensorBoard logs go there)")
            trainer.train_and_evaluate(config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, FileExistsError, trainer.TrainingDiverged) as e:
        logging.error("%s", e)
        raise SystemExit(f"main.py: error: {e}") from None


if __name__ == "__main__":
    app.run(main)
