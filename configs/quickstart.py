"""A real training that needs no download: scikit-learn's handwritten digits at 32 px.

    python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart

1,433 training and 364 held-out images (a fixed split), 10 classes. Any variant trains here,
e.g. `--config.model=shufflenet_v2_x0_5`; each family reaches 90 % held-out top-1 or more within
a few minutes on a 2-core CPU (README, "Quick start").
"""

from configs import default


def get_config(variant: str = ""):
    """`configs/quickstart.py`, or `configs/quickstart.py:progressive`: the same budget in 4
    progressive stages, 16 to 32 px with dropout 0.1 to 0.3 (docs/benchmarks.md compares the two)."""
    if variant not in ("", "progressive"):
        raise ValueError(f"unknown quickstart variant {variant!r}: '' or 'progressive'")
    c = default.get_config()
    c.model = "mobilenet_v2_050"
    c.dataset = "digits"
    c.num_classes = 10
    c.image_size = 32
    c.batch_size = 64
    c.num_epochs = 12.0
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.nesterov = True
    c.lr = 0.05
    c.warmup_epochs = 1.0
    c.weight_decay = 5e-5
    c.schedule = "cosine"
    c.label_smoothing = 0.1
    c.ema_decay = 0.0
    # The digits are centred at image_size already, and a mirrored digit is another shape:
    # no crop, no flip, and evaluation on the whole image.
    c.crop_scale = (1.0, 1.0)
    c.crop_ratio = (1.0, 1.0)
    c.hflip = 0.0
    c.crop_pct = 1.0
    c.data_workers = 0
    c.data_threads = 2
    c.log_every_steps = 22
    c.eval_every_epochs = 4.0
    if variant == "progressive":
        c.progressive.stages = 4
        c.progressive.image_size = (16, 32)
        c.progressive.dropout = (0.1, 0.3)
    return c
