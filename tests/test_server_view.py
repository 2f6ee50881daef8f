"""What the server sees: a recording wrapper at the server boundary (DP on and off).

Every byte the SecAgg server receives and every Aggregate the FedHPro server is handed are
recorded. Masked vectors must look uniform on Z_{2^b} and share nothing with any client's
encoded input; the only decoded vector is the sum of the survivors' uploads.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

import protocol.server
from protocol.messages import MaskedInput, decode
from secure_fed.aggregation.secagg import LayoutCodec
from secure_fed.config import TrainConfig
from secure_fed.fl.server import FedServer
from secure_fed.run.trainer import Trainer


@pytest.mark.parametrize("dp", ["off", "sample"])
def test_server_receives_only_masked_bytes_and_the_sum(dp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[bytes] = []
    aggregates = []
    plain: dict[int, np.ndarray] = {}
    encoded: dict[int, np.ndarray] = {}

    real_receive = protocol.server.SecAggServer.receive
    real_apply = FedServer.apply
    real_encode = LayoutCodec.encode
    real_work = Trainer.client_work

    def rec_receive(self, data):  # type: ignore[no-untyped-def]
        received.append(bytes(data))
        return real_receive(self, data)

    def rec_apply(self, agg, bc):  # type: ignore[no-untyped-def]
        aggregates.append(agg)
        return real_apply(self, agg, bc)

    def rec_work(self, bc, cid, side, final):  # type: ignore[no-untyped-def]
        vec = real_work(self, bc, cid, side, final)
        plain[cid] = vec
        return vec

    def rec_encode(self, vector, rng):  # type: ignore[no-untyped-def]
        words = real_encode(self, vector, rng)
        for cid, v in plain.items():
            if v is vector:
                encoded[cid] = words
        return words

    monkeypatch.setattr(protocol.server.SecAggServer, "receive", rec_receive)
    monkeypatch.setattr(FedServer, "apply", rec_apply)
    monkeypatch.setattr(LayoutCodec, "encode", rec_encode)
    monkeypatch.setattr(Trainer, "client_work", rec_work)

    cfg = TrainConfig(clients=6, cohort=6, rounds=1, rounds_of_hp=3, meta_steps=5, meta_per_class=5, dropout=0.0,
                      secagg="secagg+", dp=dp, noise_multiplier=2.0 if dp != "off" else None, target_epsilon=None,
                      hardened=False, seed=11)
    Trainer(cfg, progress=False, log=lambda s: None, write_outputs=False).run()

    assert len(aggregates) == 1 and len(plain) == 6 and len(encoded) == 6
    masked = [m for m in map(decode, received) if isinstance(m, MaskedInput)]
    assert len(masked) == 6
    for m in masked:
        y = m.vector()
        x = encoded[m.sender]
        assert np.mean(y == x) < 1e-3  # nothing of the encoded input shows through
        top = (y >> np.uint32(24)).astype(np.int64)
        counts = np.bincount(top, minlength=256)
        assert chisquare(counts).pvalue > 1e-6, "masked vector is not uniform on its top byte"
        for cid, v in plain.items():  # no client's float upload appears in any message
            probe = v[:8].astype("<f8").tobytes()
            assert all(probe not in data for data in received), cid
    agg = aggregates[0]
    total = sum(plain[c] for c in agg.meta["summed"])
    bound = max(agg.meta["error_bound"].values())
    if dp == "off":
        assert np.abs(agg.vector - total).max() <= bound
    for v in plain.values():
        assert not np.allclose(agg.vector, v)
