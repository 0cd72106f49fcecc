"""The MindSpore side of tests/test_mindspore.py, run in the MindSpore venv (NumPy 1, no jax).

    $LIGHTNETS_MINDSPORE_PYTHON tests/mindspore_side.py DIR

Reads from DIR `images_<size>.npy` (NCHW float32 photos, any number of sizes), `ours.ckpt` and
`ours_split.ckpt` (the same, with a CRC and split into pieces; both written by lightnets). Writes to DIR:
- `zoo.ckpt`: the model zoo's MobileNetV1 (1001 classes), random weights and BatchNorm
  statistics, `mindspore.save_checkpoint`; `zoo_crc.ckpt`, the same with `crc_check=True`;
  `zoo_logits_<size>.npy`: its float32 eval logits;
- `train.ckpt`: the same network after one Momentum step, saved with the optimiser (moments,
  learning rate, momentum, global step); `train_logits_<size>.npy`: its eval logits after it;
- `ours_logits_<size>.npy`: the logits of `ours.ckpt` loaded with `load_param_into_net(strict_load=True)`;
- `info.json`: MindSpore's version, the network's parameter count, what the strict load
  reported, whether `ours_split.ckpt` (read with `crc_check=True`) holds what `ours.ckpt` holds,
  and MindSpore's checkpoint descriptor (hex) for comparison with ours.
"""

import glob
import json
import os
import sys

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore.train import checkpoint_pb2


# The model zoo's network, official/cv/MobileNet/mobilenetv1/src/mobilenet_v1.py, with its layer
# names (so that save_checkpoint writes the zoo's parameter names).
def conv_bn_relu(in_channel, out_channel, kernel_size, stride, depthwise, activation="relu6"):
    output = [
        nn.Conv2d(in_channel, out_channel, kernel_size, stride, pad_mode="same", group=in_channel if depthwise else 1),
        nn.BatchNorm2d(out_channel),
    ]
    if activation:
        output.append(nn.get_activation(activation))
    return nn.SequentialCell(output)


class MobileNetV1(nn.Cell):
    def __init__(self, class_num=1001):
        super().__init__()
        cnn = [conv_bn_relu(3, 32, 3, 2, False)]
        # (out channels, stride) of the 13 depthwise-separable units: Conv1 ... Conv13.
        channels = 32
        for out, stride in (
            (64, 1),
            (128, 2),
            (128, 1),
            (256, 2),
            (256, 1),
            (512, 2),
            (512, 1),
            (512, 1),
            (512, 1),
            (512, 1),
            (512, 1),
            (1024, 2),
            (1024, 1),
        ):
            cnn.append(conv_bn_relu(channels, channels, 3, stride, True))
            cnn.append(conv_bn_relu(channels, out, 1, 1, False))
            channels = out
        self.network = nn.SequentialCell(cnn)
        self.fc = nn.Dense(1024, class_num)

    def construct(self, x):
        output = self.network(x)
        output = ops.ReduceMean()(output, (2, 3))
        return self.fc(output)


def randomize(net, seed):
    """Random weights (He-scaled, so that logits stay of order one), random BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        shape, name = p.shape, p.name
        if name.endswith("moving_mean") or name.endswith("beta") or name.endswith("bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("moving_variance") or name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))


def logits(net, images):
    net.set_train(False)
    return net(ms.Tensor(images)).asnumpy().astype(np.float32)


def main(out):
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    sizes = sorted(int(p.rsplit("_", 1)[1][:-4]) for p in glob.glob(os.path.join(out, "images_*.npy")))
    images = {s: np.load(os.path.join(out, f"images_{s}.npy")) for s in sizes}
    info = {"mindspore": ms.__version__, "descriptor": checkpoint_pb2.DESCRIPTOR.serialized_pb.hex()}

    net = MobileNetV1(1001)
    randomize(net, 0)
    info["parameters"] = int(sum(np.prod(p.shape) for p in net.get_parameters()))
    info["trainable_parameters"] = int(sum(np.prod(p.shape) for p in net.trainable_params()))
    ms.save_checkpoint(net, os.path.join(out, "zoo.ckpt"))
    ms.save_checkpoint(net, os.path.join(out, "zoo_crc.ckpt"), crc_check=True)
    for s in sizes:
        np.save(os.path.join(out, f"zoo_logits_{s}.npy"), logits(net, images[s]))

    # A training checkpoint: one Momentum step (moments become non-zero), saved with its optimiser.
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    train = nn.TrainOneStepCell(nn.WithLossCell(net, loss), optimizer)
    train.set_train(True)
    batch = images[sizes[0]][:4]
    train(ms.Tensor(batch), ms.Tensor(np.arange(len(batch), dtype=np.int32)))
    ms.save_checkpoint(train, os.path.join(out, "train.ckpt"))
    for s in sizes:
        np.save(os.path.join(out, f"train_logits_{s}.npy"), logits(net, images[s]))

    ours = MobileNetV1(1001)
    not_loaded = ms.load_param_into_net(ours, ms.load_checkpoint(os.path.join(out, "ours.ckpt")), strict_load=True)
    info["not_loaded"] = [list(x) for x in not_loaded]
    # The same weights written with a CRC and in small pieces: MindSpore verifies and joins them.
    split = ms.load_checkpoint(os.path.join(out, "ours_split.ckpt"), crc_check=True)
    whole = ms.load_checkpoint(os.path.join(out, "ours.ckpt"))
    info["split_equal"] = split.keys() == whole.keys() and all(
        np.array_equal(split[k].asnumpy(), whole[k].asnumpy()) for k in whole
    )
    for s in sizes:
        np.save(os.path.join(out, f"ours_logits_{s}.npy"), logits(ours, images[s]))
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1])
