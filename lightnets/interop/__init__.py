"""Other frameworks' file formats that `python -m lightnets.convert` reads and writes.

    mindspore_ckpt.py   MindSpore's `.ckpt` (protobuf, `mindspore_checkpoint.proto`), without MindSpore

PyTorch's state dicts need no reader of ours (torch.load(weights_only=True), safetensors); their
name maps live in the family files and `lightnets/convert.py`.
"""
