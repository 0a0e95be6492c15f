"""The README documents every metric, generated from the one list the metrics are made from
(:data:`tenantd.metrics.FAMILIES`), so the two cannot drift; and ``--metrics`` values parse or are
refused with a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantd.catalog import Catalog
from tenantd.config import ConfigError, Policy, PolicyInForce
from tenantd.metrics import FAMILIES, Metrics, markdown_table, parse_listen

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_generated_one() -> None:
    assert markdown_table() in README.read_text(), (
        "README.md's metrics table is out of date: replace it with the output of "
        "python -c 'from tenantd.metrics import markdown_table; print(markdown_table())'"
    )


def test_every_metric_the_registry_makes_is_in_the_table() -> None:
    registry = Metrics(Catalog(), PolicyInForce(Policy())).registry
    documented = {f.name.removesuffix("_total") for f in FAMILIES}
    made = {name for name in registry._names_to_collectors if name.startswith("tenantd_")}
    # prometheus_client registers each counter as NAME, NAME_total and NAME_created, a histogram
    # as NAME plus its _bucket, _count, _sum and _created samples.
    suffixes = ("_total", "_created", "_bucket", "_count", "_sum")
    bases = {next((n.removesuffix(s) for s in suffixes if n.endswith(s)), n) for n in made}
    assert bases and bases <= documented, bases - documented


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9464", ("127.0.0.1", 9464)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["", "host:", "host:http", "127.0.0.1:70000", "127.0.0.1:-1"])
def test_bad_listen_addresses_say_what_is_wanted(value: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        parse_listen(value)
