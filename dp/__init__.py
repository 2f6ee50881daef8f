"""dp layer of secure_fed: clipping, noise and privacy accounting (on Opacus).

Modules (import them directly; this package imports nothing heavy on its own):

* :mod:`dp.clipping` - closed-form per-sample clipped per-class sums, ``clip_vector``.
* :mod:`dp.dpsgd` - DP-SGD local training via Opacus with keystream sampling and noise.
* :mod:`dp.discrete_gaussian` - exact vectorized discrete Gaussian sampler.
* :mod:`dp.mechanisms` - Gaussian / discrete Gaussian mechanisms, local/distributed shares.
* :mod:`dp.events`, :mod:`dp.ledger` - immutable events and the append-only ledger.
* :mod:`dp.accountants` - RDP and PRV accountants over events.
* :mod:`dp.planning` - run plans and the noise multiplier for a target epsilon.
"""
