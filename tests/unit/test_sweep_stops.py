"""Who cut a trial: ASHA or the time budget (``tune.time_budget_s``), as the trial table says.

Ray's own ``AsyncHyperBandScheduler`` and ``TimeoutStopper`` make the decisions here
(no Ray cluster is started); the subclasses only record them.
"""

from __future__ import annotations

import pickle

from ray.tune.schedulers import TrialScheduler

from tune import stops
from tune.sweep import TrialRow, _label_stops


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id
        self.config: dict = {}


def _row(trial_id: str, epochs_run: int, planned: int = 8, status: str = "TERMINATED") -> TrialRow:
    # As _row builds them: every trial short of its planned epochs starts as stopped_early.
    return TrialRow(trial_id=trial_id, status=status, config={}, best_metric=0.5, epochs_run=epochs_run,
                    epochs_planned=planned, stopped_early=status != "ERROR" and epochs_run < planned,
                    best_checkpoint=None)


def test_asha_records_the_trials_it_stops():
    asha = stops.RecordingASHA(sweep="sweep-asha", time_attr="training_iteration", metric="auc", mode="max",
                               max_t=8, grace_period=1, reduction_factor=2)
    trials = [_Trial(f"t{i}") for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    decisions = {t.trial_id: asha.on_trial_result(None, t, {"training_iteration": 1, "auc": auc})
                 for t, auc in zip(trials, [0.9, 0.1, 0.8, 0.05])}
    stopped = {tid for tid, d in decisions.items() if d == TrialScheduler.STOP}
    assert stopped, decisions  # ASHA's own rule stopped the weak ones at the first rung
    assert stops.ASHA_STOPPED.pop("sweep-asha") == stopped
    # A restored sweep runs with an unpickled scheduler: it still records under the sweep's name.
    assert pickle.loads(pickle.dumps(asha)).sweep == "sweep-asha"


def test_budget_stopper_records_that_the_budget_ran_out():
    stopper = stops.BudgetStopper(1e-9, sweep="sweep-budget")
    assert stopper.stop_all() is False  # Ray's TimeoutStopper starts counting at its first check
    assert "sweep-budget" not in stops.BUDGET_SPENT
    while not stopper.stop_all():
        pass
    assert "sweep-budget" in stops.BUDGET_SPENT
    stops.BUDGET_SPENT.discard("sweep-budget")


def test_trials_cut_by_the_budget_are_labelled_so_not_as_asha():
    rows = [_row("asha-cut", 2), _row("running-at-budget", 5), _row("never-started", 0), _row("finished", 8),
            _row("failed", 3, status="ERROR")]
    _label_stops(rows, {"asha-cut"}, budget_spent=True)
    by = {r.trial_id: r.stopped_by for r in rows}
    assert by == {"asha-cut": "asha", "running-at-budget": "time budget", "never-started": "time budget",
                  "finished": "", "failed": ""}
    assert [r.trial_id for r in rows if r.stopped_early] == ["asha-cut"]


def test_without_a_spent_budget_short_trials_stay_asha_stops():
    rows = [_row("a", 2), _row("b", 8)]
    _label_stops(rows, {"a"}, budget_spent=False)
    assert [(r.stopped_by, r.stopped_by_budget) for r in rows] == [("asha", False), ("", False)]
