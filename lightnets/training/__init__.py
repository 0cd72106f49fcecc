"""Training: from a config to a trained run in a workdir.

    steps.py        config -> model, optimiser, schedule, batch augmentation and the jitted steps;
                    no data pipeline (a benchmark builds the trainer's step where grain is absent)
    train.py        TrainState and the pure train and eval steps, jitted over a mesh of all devices
    trainer.py      the loop: config checks, data, restore or init, steps, evaluation, checkpoints
    optim.py        optimisers and learning-rate schedules of the seeds' recipes
    augment.py      random erasing, Mixup and CutMix on the device, inside the train step
    loss_scale.py   float16's loss scale, in the train state
    progressive.py  EfficientNetV2's progressive learning: the stages and what each changes

The path of a run: `main.py` -> `trainer.train_and_evaluate` -> `input_pipeline` (global sharded
batches) -> the jitted step of `steps.build_steps` (`train.make_train_step`) -> checkpoints
(`lightnets.checkpoint`) and metrics.
"""
