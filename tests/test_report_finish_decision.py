"""An epoch report and a trial's end as pure decisions: sweep + report/ending + time -> columns to write.
No database here."""
import math

from agent.decisions import ReportDecision, decide_finish, decide_report
from agent.store import Sweep

CFG = {"method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
       "parameters": {"learning_rate": {"min": 0.001, "max": 0.1}}}
NOW, LEASE = 1000.0, 60.0


def sweep(state="running", **config):
    return Sweep(id="s1", config={**CFG, **config}, state=state)


def test_a_report_extends_the_lease_and_keeps_the_finite_metric():
    d = decide_report(sweep(), {"best_val_f1": 0.5, "epoch": 2}, NOW, LEASE)
    assert d == ReportDecision(0.5, {"heartbeat_at": NOW, "lease_expires": NOW + LEASE, "metric": 0.5})


def test_a_report_without_a_finite_metric_keeps_the_old_one_and_is_not_judged():
    for metrics in ({"epoch": 2}, {"best_val_f1": math.nan}, {"best_val_f1": True}):
        d = decide_report(sweep(early_terminate={"type": "hyperband", "min_iter": 1}), metrics, NOW, LEASE)
        assert d.value is None and "metric" not in d.cols and not d.judge and not d.stop


def test_hyperband_judges_a_report_only_when_the_sweep_terminates_early():
    assert not decide_report(sweep(), {"best_val_f1": 0.5}, NOW, LEASE).judge
    assert decide_report(sweep(early_terminate={"type": "hyperband", "min_iter": 1}),
                         {"best_val_f1": 0.5}, NOW, LEASE).judge


def test_a_cancelled_sweep_stops_the_trial_at_its_next_report_and_says_why():
    d = decide_report(sweep("cancelled", early_terminate={"type": "hyperband", "min_iter": 1}),
                      {"best_val_f1": 0.5}, NOW, LEASE)
    assert d.stop and not d.judge and d.cols["stop_reason"] == "sweep cancelled" and d.cols["metric"] == 0.5


def test_a_stopped_trial_is_finished_with_its_real_metric_and_the_stop_flag():
    cols = decide_finish(sweep(), "stopped", {"best_val_f1": 0.7}, None, NOW)
    assert cols == {"summary": {"best_val_f1": 0.7}, "finished_at": NOW, "lease_expires": None, "metric": 0.7,
                    "stopped": 1, "state": "finished"}


def test_a_trial_stopped_by_a_cancel_is_killed():
    cols = decide_finish(sweep("cancelled"), "stopped", {}, None, NOW)
    assert cols["state"] == "killed" and "stopped" not in cols and "metric" not in cols


def test_a_trial_that_ran_all_its_epochs_clears_a_late_stop():
    cols = decide_finish(sweep(), "finished", {"best_val_f1": 0.7}, None, NOW)
    assert cols["state"] == "finished" and cols["stopped"] == 0 and cols["stop_reason"] is None


def test_a_preempted_trial_has_no_owner_and_no_end_time_and_a_failure_keeps_its_reason_short():
    cols = decide_finish(sweep(), "preempted", {}, None, NOW)
    assert cols["state"] == "preempted" and cols["worker"] is None and cols["finished_at"] is None
    cols = decide_finish(sweep(), "failed", {}, "x" * 5000, NOW)
    assert cols["state"] == "failed" and cols["error"] == "x" * 4000 and cols["finished_at"] == NOW
