"""The fields every config has, with their defaults; the family configs set their seed's recipe.

Override any field on the command line, e.g. `--config.batch_size=256 --config.lr=0.1`; a field
that does not exist is an error. `main.py --helpfull` lists the flags, this file documents them.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What to train, on what.
    c.model = "mobilenet_v2_100"  # a name from `lightnets.list_models()`
    c.num_classes = 1000  # classifier size; 0: the data set's class count
    c.dataset = "tfds:imagenet2012"  # digits, synthetic[:N], tfds:NAME, folder:PATH, prepared:PATH, cifar10:PATH
    c.image_size = 224  # training and evaluation resolution, pixels (square)
    c.dtype = "bfloat16"  # computation dtype; parameters and BatchNorm statistics stay float32
    # float16 only (lightnets/training/loss_scale.py): "dynamic" (jmp's rule: start at 2**15, halve and skip
    # the step at a non-finite gradient, double after 2000 finite steps) or a fixed scale, e.g.
    # "1024" as the MindSpore seed (a non-finite gradient still skips the step). Ignored for
    # bfloat16 and float32, whose exponent range needs no scale.
    c.loss_scale = "dynamic"
    # The per-channel normalisation of RGB in [0, 1] that the network sees, in training, evaluation,
    # predict and export alike; None: the model's reference (`lightnets.model_info(model).mean/std`),
    # or, with init_from, the one the weights were trained with.
    c.mean = placeholder(tuple)
    c.std = placeholder(tuple)
    c.seed = 0  # initialisation, data order and dropout
    c.init_from = ""  # a weights directory (python -m lightnets.convert --output) to fine-tune from
    c.dropout = placeholder(float)  # classifier dropout; None: the variant's default
    c.drop_path_rate = placeholder(float)  # stochastic depth; None: the variant's default

    # How long, in what batches. num_train_steps > 0 overrides num_epochs.
    c.batch_size = 1024  # global, over all devices and hosts
    c.eval_batch_size = 0  # 0: batch_size
    c.num_epochs = 90.0
    c.num_train_steps = -1

    # Optimiser (lightnets/training/optim.py): sgd, rmsprop_tf, adamw or lamb.
    c.optimizer = "sgd"
    c.lr = 0.4  # at lr_base_batch_size images; scaled linearly to batch_size
    c.lr_base_batch_size = 0  # 0: lr is used as it is, whatever the batch size
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 4e-5
    c.weight_decay_norm_and_bias = False  # False: no decay on BatchNorm parameters and biases
    c.opt_eps = placeholder(float)  # rmsprop_tf (inside the square root), adamw, lamb; None: optim.EPSILON's
    c.b1 = 0.9
    c.b2 = 0.999
    c.rmsprop_decay = 0.9
    c.grad_clip_norm = 0.0  # 0: no clipping
    # Learning-rate schedule: linear warmup, then cosine, step, exponential, linear or constant.
    c.schedule = "cosine"
    c.warmup_epochs = 0.0
    c.warmup_lr = 0.0
    c.min_lr = 0.0
    c.decay_epochs = 2.4  # step/exponential: decay every decay_epochs by decay_rate
    c.decay_rate = 0.97

    # Regularisation.
    c.label_smoothing = 0.1
    c.ema_decay = 0.0  # 0: no EMA; else evaluated (and kept best by) alongside the raw weights

    # Input pipeline (input_pipeline/): decoding and augmentation on the host, uint8 to the device.
    c.data_dir = ""  # TFDS data_dir for tfds: data sets; "": TFDS's default (~/tensorflow_datasets)
    c.data_workers = -1  # grain worker processes decoding per host; -1: one per core; 0: in-process threads
    c.data_threads = 2  # decoding threads per worker (PIL releases the GIL while it decodes)
    c.jpeg_draft = True  # decode JPEGs at 1/2, 1/4 or 1/8 size when the crop allows (much faster)
    # Training crop: "inception_crop" (random resized crop, ImageNet's) or "pad_crop" (pad
    # crop_padding pixels, a random crop of the image's own size, then resize: CIFAR's).
    c.train_transform = "inception_crop"
    c.crop_padding = 4  # pad_crop: pixels of black added on each side before the crop
    c.crop_scale = (0.08, 1.0)  # Inception random resized crop: area fraction ...
    c.crop_ratio = (3 / 4, 4 / 3)  # ... and aspect ratio
    c.hflip = 0.5  # horizontal flip probability
    c.train_interpolation = "bilinear"  # bilinear, bicubic, nearest or random (timm: bilinear/bicubic)
    c.randaugment = ""  # timm's RandAugment string, e.g. "rand-m9-mstd0.5"; "": none
    # Evaluation: resize the shorter side to image_size / crop_pct, then the centre crop (crop_pct
    # 1.0 on a square image: the whole image resized, as CIFAR is evaluated).
    c.crop_pct = 0.875
    c.eval_interpolation = "bilinear"
    # On the device, in the train step (lightnets/training/augment.py), as timm's:
    c.reprob = 0.0  # random erasing probability (per image, pixel mode)
    c.mixup = 0.0  # Mixup alpha; 0: off
    c.cutmix = 0.0  # CutMix alpha; 0: off
    c.mixup_prob = 1.0  # probability of mixing a batch
    c.mixup_switch_prob = 0.5  # probability of CutMix instead of Mixup when both are on

    # Progressive learning (lightnets/training/progressive.py; EfficientNetV2, Section 4): the run in `stages`
    # equal parts, each scheduled field linear from its first value (stage 1) to its last (the
    # last stage); (): not scheduled. image_size is the training size (evaluation stays at
    # image_size above), randaugment the magnitude m of `randaugment`; the train step compiles
    # once per stage. E.g. --config.progressive.stages=4 --config.progressive.image_size="(128, 300)".
    c.progressive = ml_collections.ConfigDict()
    c.progressive.stages = 0  # 0: off
    c.progressive.image_size = ()
    c.progressive.randaugment = ()
    c.progressive.mixup = ()
    c.progressive.cutmix = ()
    c.progressive.dropout = ()

    # Sharding: FSDP splits parameters and optimiser state over the devices (large EfficientNetV2s).
    c.fsdp = False

    # Bookkeeping.
    c.log_every_steps = 50  # console line and TensorBoard scalars
    c.eval_every_epochs = 1.0  # 0: only at the end
    c.checkpoint_every_steps = 0  # 0: at every evaluation only
    c.keep_checkpoints = 3  # the last N, plus the best by (EMA) top-1
    c.profile_steps = 0  # > 0: a profiler trace of that many steps, after warm-up, in workdir/profile
    # Resuming refuses a config that differs from the run's in what the run is (model, data, batch,
    # optimiser, schedule, augmentation...); True accepts the differences (logged, and recorded in
    # the checkpoints' metadata). Logging, checkpointing, evaluation, data workers and the length may change.
    c.allow_config_change = False
    return c


def family_config(family: str, variant: str, default_variant: str) -> ml_collections.ConfigDict:
    """The defaults with `model` set from the config argument, e.g. `configs/shufflenetv2.py:x0_5`."""
    import lightnets

    c = get_config()
    c.model = f"{family}_{variant or default_variant}"
    if c.model not in lightnets.list_models():
        options = [m.removeprefix(family + "_") for m in lightnets.list_models(family + "_*")]
        raise ValueError(f"unknown {family} variant {variant!r}; choose one of {options}")
    return c
