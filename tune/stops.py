"""Who stopped a trial: ASHA, or the sweep's time budget (``tune.time_budget_s``).

Tune marks both the same way (the trial ends ``TERMINATED`` short of its epochs), so
the trial table could not tell them apart. These two subclasses of Ray's own
scheduler and stopper record their decisions, keyed by the sweep's name.

The record is module state rather than an attribute: Tune's controller runs in the
driver process, and a restored sweep (``Tuner.restore``) runs with the scheduler and
stopper unpickled from its experiment directory, not the instances built here.

Ray 2.60's ``TimeoutStopper`` (what ``TuneConfig(time_budget_s=...)`` creates) stops
*every running trial* once the budget is spent, and marks the searcher finished so
no new trial starts; pending trials end without running an epoch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.stopper import TimeoutStopper

#: Sweep name -> ids of the trials ASHA stopped (in this process).
ASHA_STOPPED: dict[str, set[str]] = defaultdict(set)
#: Names of the sweeps whose time budget ran out (in this process).
BUDGET_SPENT: set[str] = set()


class RecordingASHA(AsyncHyperBandScheduler):
    """Ray's ASHA, remembering the trials it stopped."""

    def __init__(self, *, sweep: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.sweep = sweep

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            ASHA_STOPPED[self.sweep].add(trial.trial_id)
        return action


class BudgetStopper(TimeoutStopper):
    """Ray's ``TimeoutStopper`` (the time budget), remembering that it fired."""

    def __init__(self, timeout: float, *, sweep: str):
        super().__init__(timeout)
        self.sweep = sweep

    def stop_all(self) -> bool:
        spent = super().stop_all()
        if spent:
            BUDGET_SPENT.add(self.sweep)
        return spent
