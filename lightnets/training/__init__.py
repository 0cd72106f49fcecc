"""Training: from a config to a trained run in a workdir.

train.py        TrainState and the pure train and eval steps, jitted over a mesh of all devices
trainer.py      the loop: config checks, data, restore or init, steps, evaluation, checkpoints
optim.py        optimisers and learning-rate schedules of the seeds' recipes
augment.py      random erasing, Mixup and CutMix on the device, inside the train step
loss_scale.py   float16's loss scale, in the train state
progressive.py  EfficientNetV2's progressive learning: the stages and what each changes
"""
