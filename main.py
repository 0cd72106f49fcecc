"""lightnets command line: `python main.py --config=configs/mobilenetv2.py`.

Until the trainer lands this describes the configured network: its parameters and cost, and
one forward pass over the sample photos. Any config field can be overridden, e.g.
`--config.model=efficientnet_v2_rw_t --config.image_size=288`.
"""

from absl import app, flags
from ml_collections import config_flags

import lightnets
from lightnets import summary

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints and TensorBoard logs go (used by the trainer).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        lightnets.model_info(FLAGS.config.model)
    except ValueError as e:
        raise SystemExit(f"main.py: {e}") from None
    summary.describe(FLAGS.config)


if __name__ == "__main__":
    app.run(main)
