"""Deployment: a checkpoint ready for inference, and the lowering that exports it.

    inference.py    a weights directory or trainer run -> model, preprocessing, class names
    lowering.py     the model's jaxpr as ONNX nodes or TensorFlow ops (for TFLite)

The commands built on them stay where users call them: `python -m lightnets.predict` and
`python -m lightnets.export`. None of them imports `lightnets.training`: a trainer run's weights
are read by `lightnets.checkpoint.load_run`, without building its optimiser.
"""
