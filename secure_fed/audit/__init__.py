"""Empirical privacy audits of a finished run (operator side), and their common contract.

Three audits, each a function ``audit_<name>(run_dir, *, seed=None, <options>) -> dict``
that names every option it accepts as a keyword parameter (no ``**kwargs``: the runner
checks every selected audit's options before the first audit starts):

* ``inversion`` (:mod:`secure_fed.audit.inversion`): the analytic attack on per-class uploads,
  against one client's upload and against the aggregate the server holds.
* ``one-run`` (:mod:`secure_fed.audit.one_run`): a one-run epsilon lower bound of the release
  mechanism (Steinke, Nasr and Jagielski, NeurIPS 2023).
* ``membership`` (:mod:`secure_fed.audit.membership`): membership inference on the final model.

Every audit returns a JSON-serializable dict::

    {"name": str,
     "summary": {str: number | str | bool | None},   # the report's table
     "passed": bool | None,                          # None: measured, no claim checked
     "plots": [{"title", "xlabel", "ylabel", "xscale": "linear"|"log", "yscale": ...,
                "series": [{"label": str, "x": [float], "y": [float]}]}],
     "raw": {...}}                                   # scores for re-analysis

:func:`run_audits` runs a selection, writes ``RUN_DIR/audit_results.json`` atomically,
re-renders ``report.html`` and raises :class:`~secure_fed.errors.AuditFailed` afterwards if
any ``passed`` is False. Audit modules are imported only when selected.
"""

from __future__ import annotations

from secure_fed.audit.runner import AUDITS, RESULTS_NAME, read_results, run_audits

__all__ = ["AUDITS", "RESULTS_NAME", "read_results", "run_audits"]
