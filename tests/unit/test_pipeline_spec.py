"""Pipeline specs and uplinks are checked before anything is stored; the cascade's confidence."""

from __future__ import annotations

import numpy as np
import pytest

from tenantd.config import ConfigError, parse_policy
from tenantd.pipelines import top_confidence
from tenantd.pipelinespec import parse_spec

SPLIT = {"kind": "split", "edge_model": "h", "uplink": "cloud", "cloud_model": "t"}


def test_a_split_and_a_cascade_parse() -> None:
    assert parse_spec(SPLIT).tensor_encoding is None
    spec = parse_spec({**SPLIT, "kind": "cascade", "threshold": 0.8, "encoding": "int8+zlib", "forward_classes": [3]})
    assert spec.tensor_encoding is not None and spec.tensor_encoding.label == "int8+zlib"
    assert spec.forward_classes == [3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "cascade"}, "needs a threshold"),
        ({"threshold": 0.5}, "no edge answer to fall back on"),
        ({"forward_classes": [1]}, "no edge answer to fall back on"),
        ({"encoding": "brotli"}, "cannot read encoding"),
        ({"kind": "cascade", "threshold": 1.5}, "threshold"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"endpoint": "tcp://x:1"}, "endpoint"),
        ({"edge_model": 3}, "edge_model"),
    ],
)
def test_bad_specs_say_what_is_wrong(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec({**SPLIT, **change})


def test_probabilities_are_read_as_they_are_and_logits_through_a_softmax() -> None:
    assert top_confidence(np.array([[0.1, 0.7, 0.2]], np.float32)) == (pytest.approx(0.7), [1])
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]], np.float32)
    confidence, classes = top_confidence(logits)
    assert classes == [0, 2]
    assert confidence == pytest.approx(np.exp(2) / (np.exp(2) + 2))  # the less sure row decides


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[uplinks.c]\nendpoint = "tcp://h:1"\n', "needs an identity"),
        ('[uplinks.c]\nendpoint = "tcp://h:1"\nkey_file = "k"\n', "both key_file and server_key"),
        ('[uplinks.c]\nendpoint = "http://h:1"\ntenant = "e"\n', "must be tcp:// or ipc://"),
        ('[uplinks.c]\nendpoint = "tcp://h:1"\ntenant = "e"\nport = 3\n', "port"),
    ],
)
def test_bad_uplinks_stop_the_policy(table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(table)
