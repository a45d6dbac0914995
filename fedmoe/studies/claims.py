"""A claim is a declaration: what a paper (or the kit, marked ``ours``) states, how it is measured and judged.

Each study module declares its claims up front, before any run, as :class:`Claim` objects: the statement and
where it is stated, the metric, the contrast (which runs, paired how), the :class:`~fedmoe.stats.Goal` (comparator
and threshold, which renders its own text), the protocol it is scored under, the claims that must hold first
(preconditions) and the setting it is mapped over (an axis). A study measures intervals; :meth:`Claim.row` turns
a measurement into a report row whose verdict the one judge (:func:`fedmoe.stats.judge`) derives, so the goal a
row shows and the verdict it carries cannot disagree, and a boundary case is judged the same in every study.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedmoe.report import PROTOCOLS, Precondition, TargetRow
from fedmoe.stats import EXACT, Goal, Interval

#: ``Claim.source`` of a claim the kit makes itself (a sanity check or a diagnostic), not a paper.
OURS = "ours"


@dataclass(frozen=True)
class Claim:
    """One statement, declared before it is measured (see the module docstring).

    ``key`` names it in its study (``python -m fedmoe.studies --list``); ``paper`` is the report table it goes to;
    ``statement`` the row's text; ``source`` the paper's section or abstract, or :data:`OURS`; ``metric`` what
    is measured, in which units; ``contrast`` which runs it compares and how they are paired; ``protocol`` one
    of :data:`fedmoe.report.PROTOCOLS`; ``preconditions`` the keys of claims (of the same study) that must not
    FAIL for this one to be testable; ``axis`` the setting the claim is mapped over (its rows name the point).
    """

    key: str
    paper: str
    statement: str
    source: str
    metric: str
    contrast: str
    goal: Goal
    protocol: str
    preconditions: tuple[str, ...] = ()
    axis: str | None = None

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"claim {self.key!r}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not self.source:
            raise ValueError(f"claim {self.key!r}: name its source (a paper section, 'abstract', or 'ours')")

    def precondition(self, measured: Interval, bound: str = EXACT) -> Precondition:
        """This claim, measured, as a precondition of another."""
        return Precondition(self.statement, measured, self.goal, bound)

    def row(self, measured: Interval, *, command: str, seeds: int | None, run_scale: str | None,
            where: str = "", note: str = "", bound: str = EXACT,
            preconditions: Sequence[Precondition] = (), axis_value: float | str | None = None) -> TargetRow:
        """The report row of one measurement of this claim. ``where`` qualifies the statement (a suite, a setting,
        a horizon: ``"FLUX ... (gsm)"``); ``note`` adds to the contrast; ``preconditions`` are the measured
        claims named in :attr:`preconditions` (all of them: a missing one is a ValueError); ``axis_value`` is
        required exactly when the claim has an axis."""
        names = tuple(p.statement for p in preconditions)
        if len(names) != len(self.preconditions):
            raise ValueError(f"claim {self.key!r} needs its preconditions {self.preconditions} measured, got "
                             f"{len(names)}")
        if (self.axis is None) != (axis_value is None):
            raise ValueError(f"claim {self.key!r}: axis_value is required exactly when the claim has an axis "
                             f"(axis {self.axis!r}, got {axis_value!r})")
        return TargetRow(paper=self.paper, target=f"{self.statement} ({where})" if where else self.statement,
                         measured=measured, goal=self.goal, command=command,
                         note="; ".join(t for t in (self.contrast, note) if t), seeds=seeds, run_scale=run_scale,
                         protocol=self.protocol, source=self.source, bound=bound, preconditions=tuple(preconditions),
                         claim=self.key, axis=self.axis, axis_value=axis_value)

    def describe(self) -> str:
        """One line for ``--list``: key, statement, goal, protocol, source and preconditions."""
        pre = f"; needs {', '.join(self.preconditions)}" if self.preconditions else ""
        axis = f"; over {self.axis}" if self.axis else ""
        return (f"{self.key}: {self.statement} [{self.goal.text()}; {self.protocol}; {self.source}{pre}{axis}]"
                f"\n    metric: {self.metric}; contrast: {self.contrast}")


def claims_by_key(claims: Sequence[Claim]) -> dict[str, Claim]:
    """``{key: claim}``; a repeated key or a precondition naming no declared claim is a ValueError."""
    out: dict[str, Claim] = {}
    for claim in claims:
        if claim.key in out:
            raise ValueError(f"claim key {claim.key!r} is declared twice")
        out[claim.key] = claim
    for claim in claims:
        missing = [k for k in claim.preconditions if k not in out]
        if missing:
            raise ValueError(f"claim {claim.key!r} names preconditions {missing} that are not declared")
    return out
