"""Upload layout and the plaintext aggregator: the server's only input is a sum."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from secure_fed.aggregation.layout import Aggregate, PlaintextAggregator, VectorLayout
from secure_fed.errors import ConfigError
from secure_fed.fl.server import FedServer


def _layout() -> VectorLayout:
    return VectorLayout.build([("a", (2, 3)), ("b", (4,)), ("n", (1,))])


def test_flatten_roundtrip_and_missing_blocks_are_zero() -> None:
    lay = _layout()
    a = np.arange(6.0).reshape(2, 3)
    v = lay.flatten({"a": a, "n": np.array([5.0])})
    assert v.shape == (11,)
    np.testing.assert_array_equal(lay.view(v, "a"), a)
    np.testing.assert_array_equal(lay.view(v, "b"), np.zeros(4))
    assert lay.view(v, "n")[0] == 5.0


def test_flatten_rejects_wrong_shape_and_unknown_block() -> None:
    lay = _layout()
    with pytest.raises(ConfigError, match="expected shape"):
        lay.flatten({"a": np.zeros(6)})
    with pytest.raises(ConfigError, match="not in the layout"):
        lay.flatten({"zzz": np.zeros(1)})
    with pytest.raises(ConfigError, match="duplicate"):
        VectorLayout.build([("a", (1,)), ("a", (2,))])


def test_plaintext_aggregator_returns_exact_sum_and_count() -> None:
    lay = _layout()
    rng = np.random.default_rng(0)
    vecs = {cid: rng.normal(size=lay.size) for cid in (3, 1, 7)}
    agg = PlaintextAggregator().aggregate(4, lay, {cid: (lambda v=v: v) for cid, v in vecs.items()})
    np.testing.assert_allclose(agg.vector, sum(vecs.values()))
    assert agg.count == 3 and agg.round_id == 4
    assert agg.meta["survivors"] == [1, 3, 7]
    with pytest.raises(ValueError):
        agg.vector[0] = 1.0  # the sum is read-only
    assert len(agg.digest()) == 64


def test_aggregate_checks_vector_length() -> None:
    with pytest.raises(ConfigError):
        Aggregate(np.zeros(3), 1, _layout(), 0)


def test_aggregator_rejects_wrong_length_upload() -> None:
    lay = _layout()
    with pytest.raises(ConfigError, match="client 2"):
        PlaintextAggregator().aggregate(0, lay, {2: lambda: np.zeros(5)})


def test_server_entry_point_takes_an_aggregate_only() -> None:
    params = list(inspect.signature(FedServer.apply).parameters)
    assert params == ["self", "agg", "broadcast"]
    hints = FedServer.apply.__annotations__
    assert hints["agg"] in ("Aggregate", Aggregate)


def test_noised_blocks_share_one_codec_gamma() -> None:
    # One integer noise scale covers every released block, so an encoded unit must mean the
    # same in each of them: the blocks with noise share the smallest gamma; others keep theirs.
    from secure_fed.aggregation.secagg import LayoutCodec

    layout = VectorLayout.build([("feat", (6,), 100.0), ("count", (3,), 50.0), ("delta", (4,), 1.0)])
    codec = LayoutCodec.for_cohort(layout, 32, 10, {"feat": 4.0, "count": 4.0})
    assert codec.gamma("feat") == codec.gamma("count")
    alone = LayoutCodec.for_cohort(layout, 32, 10, {"count": 4.0})
    assert codec.gamma("count") < alone.gamma("count")  # count alone would get a larger gamma
    assert codec.gamma("delta") == alone.gamma("delta") > codec.gamma("feat")
