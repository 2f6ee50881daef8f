"""The privacy ledger: an append-only log of mechanism events (server side).

Per round and client the trainer appends what was released (per-class release, DP-SGD
steps, any other noised release); the report is recomputed from the log alone, so a
ledger saved with :meth:`PrivacyLedger.to_json` and loaded with
:meth:`PrivacyLedger.from_json` reproduces every epsilon bit for bit.

Subjects: an event with subject ``"k"`` concerns client k only; subject ``"all"`` concerns
every client. Client k's epsilon composes its own events and the ``"all"`` events.

Enforcement is check-then-commit: :meth:`PrivacyLedger.would_exceed` computes on a copy,
:meth:`PrivacyLedger.charge` appends only if the target still holds, else raises
:class:`PrivacyBudgetExceeded` and leaves the ledger unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from dp.accountants import epsilon_with_fallback, get_accountant
from dp.errors import ConfigError, PrivacyBudgetExceeded
from dp.events import ALL, EVENT_TYPES, Event, event_from_dict, event_to_dict

LEDGER_VERSION = 1


class PrivacyLedger:
    """Append-only sequence of immutable events with per-subject epsilon."""

    __slots__ = ("_events",)

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self._events: tuple[Event, ...] = ()
        self.extend(events)

    # -- log ------------------------------------------------------------------------
    @property
    def events(self) -> tuple[Event, ...]:
        return self._events

    def __len__(self) -> int:
        return len(self._events)

    def append(self, event: Event) -> None:
        self.extend([event])

    def extend(self, events: Iterable[Event]) -> None:
        """Append all of ``events`` or, if any is not an event, none of them."""
        new = tuple(events)
        for ev in new:
            if not isinstance(ev, tuple(EVENT_TYPES.values())):
                raise ConfigError(f"ledger entries must be events, got {type(ev).__name__}")
        self._events = self._events + new

    def subjects(self) -> list[str]:
        """Client ids that have events of their own (sorted), without ``"all"``."""
        return sorted({ev.subject for ev in self._events if ev.subject != ALL})

    def events_for(self, subject: str) -> tuple[Event, ...]:
        """Events that concern ``subject``: its own and the ``"all"`` events, in order."""
        return tuple(ev for ev in self._events if ev.subject in (subject, ALL))

    # -- accounting -----------------------------------------------------------------
    def epsilon(self, delta: float, subject: str = ALL, accountant: str = "rdp") -> float:
        """Epsilon(delta) of ``subject`` (``"all"``: the events that concern everyone)."""
        return get_accountant(accountant).epsilon(self.events_for(subject), delta)

    def epsilons(self, delta: float, accountant: str = "rdp") -> dict[str, float]:
        """Epsilon per subject (every client with events; ``"all"`` if there are none)."""
        subs = self.subjects() or [ALL]
        return {s: self.epsilon(delta, s, accountant) for s in subs}

    def max_epsilon(self, delta: float, accountant: str = "rdp") -> float:
        """The largest per-subject epsilon: the run's guarantee."""
        return max(self.epsilons(delta, accountant).values())

    def max_epsilon_with_fallback(
        self, delta: float, accountant: str = "rdp"
    ) -> tuple[float, str, str | None]:
        """(max epsilon, accountant used, note). If ``accountant`` fails for any subject
        (PRV: non-Gaussian events, non-finite result), every subject is redone with RDP."""
        subs = self.subjects() or [ALL]
        results = [epsilon_with_fallback(self.events_for(s), delta, accountant) for s in subs]
        notes = [r[2] for r in results if r[2]]
        if not notes:
            return max(r[0] for r in results), accountant, None
        return self.max_epsilon(delta, "rdp"), "rdp", notes[0]

    def would_exceed(
        self,
        events: Sequence[Event],
        target_epsilon: float,
        delta: float,
        accountant: str = "rdp",
    ) -> bool:
        """Dry run: would appending ``events`` push any subject above ``target_epsilon``?

        Judged by the epsilon that would be reported: ``accountant``'s, or RDP's for a
        subject where that accountant fails (PRV: see :func:`epsilon_with_fallback`).
        """
        trial = PrivacyLedger(self._events)
        trial.extend(events)
        subs = {ev.subject for ev in events}
        if ALL in subs:
            subs = set(trial.subjects()) | {ALL}
        return any(epsilon_with_fallback(trial.events_for(s), delta, accountant)[0] > target_epsilon
                   for s in sorted(subs))

    def charge(
        self,
        events: Sequence[Event],
        target_epsilon: float,
        delta: float,
        accountant: str = "rdp",
    ) -> None:
        """Append ``events`` if the target still holds; else raise and change nothing."""
        if self.would_exceed(events, target_epsilon, delta, accountant):
            raise PrivacyBudgetExceeded(
                f"the next release would exceed target epsilon {target_epsilon} at delta "
                f"{delta} ({accountant}); stop here, or raise --target-epsilon or the noise"
            )
        self.extend(events)

    # -- serialization --------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {"version": LEDGER_VERSION, "events": [event_to_dict(e) for e in self._events]},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        """Rebuild a ledger; a malformed document raises ConfigError."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"ledger JSON is malformed: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != LEDGER_VERSION:
            raise ConfigError(f"ledger JSON must be an object with version {LEDGER_VERSION}")
        items = doc.get("events")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ConfigError("ledger JSON 'events' must be a list of objects")
        return cls(event_from_dict(i) for i in items)
