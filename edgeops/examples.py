"""Example models made in code from data that ships with scikit-learn (nothing is downloaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeops.errors import ConfigError


@dataclass(frozen=True)
class TrainedExample:
    model_path: Path
    accuracy: float
    #: Training rows: the drift reference and the source of smoke vectors.
    reference: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def train_digits_mlp(out_path: Path, *, hidden: int | tuple[int, ...] = 32, seed: int = 0) -> TrainedExample:
    """Train an MLP on the bundled digits set and export it to ONNX (labels + probabilities).

    The scaler is part of the exported graph, so the model takes raw 0..16 pixel values, the same
    rows the simulated devices stream. ``hidden`` is one layer's width or a tuple of widths: the
    default 32-unit model is what the demo and tests ship (fast to train, 11 KB); wider ones
    (e.g. ``(512, 512)``) are where int8 GEMMs pay off, which the quantization benchmark needs.
    """
    layers = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:
        raise ConfigError("training the example needs scikit-learn and skl2onnx: pip install 'edgeops[sim]'") from exc
    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    pipeline = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=layers, max_iter=300, random_state=seed),
    )
    pipeline.fit(x_train, y_train)
    accuracy = float(pipeline.score(x_test, y_test))
    onnx_model = to_onnx(
        pipeline,
        x_train[:1],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(onnx_model.SerializeToString())
    return TrainedExample(out_path, accuracy, x_train, x_test, y_test)
