"""A hand-built ONNX model with known scores, for golden cases and service tests:

    score = sigmoid(BIAS + sum(WEIGHTS[f] * x[f]))   with NaN inputs counted as 0

It has the same interface as the LightGBM export (float32 [n, F] in, `probabilities` [n, 2] out, the
rta.* metadata), so the service loads it through the same checks. Scores can be worked out by hand.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from rta_service import features, model

BIAS = -3.0
WEIGHTS = {"known": 1.0, "order_count": 0.25, "wecom_friend": 0.5, "is_member": -0.5}
VERSION = "golden-linear-1"


def expected_score(row: list[float]) -> float:
    z = BIAS + sum(WEIGHTS.get(name, 0.0) * (0.0 if math.isnan(v) else v)
                   for name, v in zip(features.FEATURE_NAMES, row, strict=True))
    return 1.0 / (1.0 + math.exp(-z))


def build(path, feature_names=features.FEATURE_NAMES, version: str = VERSION, only_pairs: bool = False) -> None:
    """only_pairs: a model that breaks at run time unless given exactly two rows (it reshapes its input
    to [2, F]): it passes the service's start-up check, then fails on a single request."""
    n = len(feature_names)
    w = np.array([[WEIGHTS.get(f, 0.0)] for f in feature_names], dtype=np.float32)
    first = "features"
    extra = []
    if only_pairs:
        first = "pairs"
        extra = [helper.make_node("Reshape", ["features", "pair_shape"], ["pairs"])]
    nodes = [
        *extra,
        helper.make_node("IsNaN", [first], ["nan_mask"]),
        helper.make_node("Where", ["nan_mask", "zero", first], ["clean"]),
        helper.make_node("MatMul", ["clean", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "bias"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "golden",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("bias", TensorProto.FLOAT, [], [BIAS]),
            helper.make_tensor("w", TensorProto.FLOAT, [n, 1], w.ravel().tolist()),
            *([helper.make_tensor("pair_shape", TensorProto.INT64, [2], [2, n])] if only_pairs else []),
        ])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 8
    for key, value in {model.META_FEATURES: json.dumps(list(feature_names)), model.META_VERSION: version,
                       model.META_METRICS: "{}"}.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
