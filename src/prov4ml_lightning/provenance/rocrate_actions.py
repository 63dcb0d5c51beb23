"""The actions of a run's RO-Crate (:func:`.rocrate.write_rocrate`), read off the PROV document: one
per stage that consumed data (each ``Trainer.fit``, and each stand-alone test, validate or predict
loop), with what the stage and its parts (epochs, loops) used as its objects and what they
generated as its results, so that under Process Run Crate semantics (an action's objects are
upstream of its results) the test set is upstream of the test metrics only, never of the model.

What the run's session itself used or generated (the functional API: ``log_dataset``,
``log_model``) is one more action, of the run; a run without stages has only that one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prov4ml_lightning.provenance.rocrate_input import RunDocument, attr_types, attr_value

__all__ = ["STAGES", "ActionPlan", "plan_actions"]

#: the PROV types of the activities that become actions of their own
STAGES = ("p4l:Fit", "p4l:TestLoop", "p4l:ValidationLoop", "p4l:PredictLoop")


@dataclass
class ActionPlan:
    """One action: its activity (``None``: the run), and the PROV ids of what it used and generated,
    and of the metric series whose last value it produced."""

    activity: str | None
    attrs: dict[str, Any]
    inputs: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)

    def add(self, where: list[str], key: str) -> None:
        if key not in where:
            where.append(key)


def plan_actions(run: RunDocument) -> list[ActionPlan]:
    """The stages' actions in the order they started, then the run's when it has anything to say."""
    acts = run.activities
    sessions = {k for k, a in acts.items() if "p4l:Session" in attr_types(a) or "p4l:Run" in attr_types(a)}

    def parent(key: str) -> str | None:
        value = attr_value(acts.get(key, {}).get("p4l:partOf"))
        return str(value) if value is not None else None

    def stage_of(key: str) -> str | None:
        """The stage ``key`` is (part of): the ancestor right below a session, if it is a stage."""
        seen: set[str] = set()
        while key in acts and key not in sessions and key not in seen:
            seen.add(key)
            up = parent(key)
            if up is None or up in sessions or up not in acts:
                return key if any(t in attr_types(acts[key]) for t in STAGES) else None
            key = up
        return None

    stages = {k: ActionPlan(k, acts[k]) for k in acts if stage_of(k) == k}
    whole = ActionPlan(None, run.attrs)

    def plan_of(activity: str) -> ActionPlan:
        stage = stage_of(activity)
        return stages[stage] if stage is not None else whole

    for activity, entity in run.used:
        plan = plan_of(activity)
        plan.add(plan.inputs, entity)
    generators: dict[str, list[str]] = {}
    for entity, activity in run.generated:
        plan = plan_of(activity)
        plan.add(plan.results, entity)
        generators.setdefault(entity, []).append(activity)
    # a metric series' last value: from the stage that generated its last segment (the latest to start)
    members: dict[str, list[str]] = {}
    for collection, member in run.members:
        members.setdefault(collection, []).append(member)
    for key, _ in run.of_type("p4l:MetricSeries"):
        sources = [a for m in members.get(key, []) for a in generators.get(m, [])] or generators.get(key, [])
        plans = [plan_of(a) for a in sources] or [whole]
        plan = max(plans, key=lambda p: str(attr_value(p.attrs.get("prov:startTime")) or ""))
        plan.add(plan.series, key)

    ordered = sorted(stages.values(), key=lambda p: str(attr_value(p.attrs.get("prov:startTime")) or ""))
    return [*ordered, whole]
