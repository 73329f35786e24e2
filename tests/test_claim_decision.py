"""The claim as a pure decision: sweep + trials + time -> what to do. No database here."""
from agent.decisions import ClaimDecision, Requeue, decide_claim
from agent.store import Sweep, Trial

CFG = {"method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
       "parameters": {"learning_rate": {"min": 0.001, "max": 0.1}}}
NOW = 1000.0


def sweep(**over):
    return Sweep(id="s1", config={**CFG, **over.pop("config", {})}, **over)


def trial(i, state="finished", **kw):
    return Trial(sweep_id="s1", name=f"t-{i:03d}", state=state, params={"learning_rate": 0.01 * i}, id=i, **kw)


class Suggest:
    def __init__(self, params=None):
        self.params = {"learning_rate": 0.05} if params is None else params
        self.seen = None

    def __call__(self, trials):
        self.seen = trials
        return self.params or None


def test_a_new_trial_when_nothing_is_queued():
    s = Suggest()
    d = decide_claim(sweep(), [trial(1)], NOW, 3, s)
    assert d == ClaimDecision("claimed", "new", params={"learning_rate": 0.05})
    assert [t.name for t in s.seen] == ["t-001"]


def test_lost_trials_are_requeued_before_anything_else_and_handed_out_first():
    lost = trial(2, "running", worker="w9", lease_expires=NOW - 1, attempts=0)
    alive = trial(3, "running", worker="w8", lease_expires=NOW + 30)
    s = Suggest()
    d = decide_claim(sweep(), [trial(1), lost, alive], NOW, 3, s)
    assert d.status == "claimed" and d.trial_id == 2 and d.reason == "resumed" and s.seen is None
    assert d.requeue == (Requeue(2, "pending", 1, "worker w9 lost (lease expired); requeued"),)


def test_a_trial_lost_too_often_is_crashed_not_retried():
    lost = trial(2, "running", worker="w9", lease_expires=NOW - 1, attempts=2)
    d = decide_claim(sweep(), [lost], NOW, 3, Suggest())
    assert d.requeue[0].state == "crashed" and "lost 3 times" in d.requeue[0].error
    assert d.status == "claimed" and d.params is not None  # the crashed one is not handed out again


def test_preempted_trials_come_before_new_ones():
    d = decide_claim(sweep(), [trial(1), trial(2, "preempted")], NOW, 3, Suggest())
    assert (d.status, d.trial_id, d.reason) == ("claimed", 2, "resumed")


def test_paused_hands_out_nothing_but_still_requeues():
    lost = trial(2, "running", worker="w9", lease_expires=NOW - 1)
    d = decide_claim(sweep(state="paused"), [lost], NOW, 3, Suggest())
    assert d.status == "paused" and len(d.requeue) == 1 and d.trial_id is None and d.params is None


def test_finished_or_cancelled_sweeps_are_done_without_asking_the_search():
    s = Suggest()
    for state in ("finished", "cancelled"):
        d = decide_claim(sweep(state=state, finished_reason="by user"), [trial(1)], NOW, 3, s)
        assert d.status == "done" and d.reason == f"sweep {state}: by user" and not d.finish_sweep
    assert s.seen is None


def test_metric_target_finishes_the_sweep():
    best = trial(1, metric=0.95)
    d = decide_claim(sweep(config={"metric": {"name": "best_val_f1", "goal": "maximize", "target": 0.9}}),
                     [best, trial(2, "preempted")], NOW, 3, Suggest())
    assert d.status == "done" and d.finish_sweep and "target reached by t-001" in d.reason


def test_run_cap_waits_for_running_trials_then_finishes():
    cfg = {"run_cap": 2}
    d = decide_claim(sweep(config=cfg), [trial(1), trial(2, "running", lease_expires=NOW + 5)], NOW, 3, Suggest())
    assert d.status == "wait" and "run_cap 2 reached; 1 trial(s) still running" == d.reason and not d.finish_sweep
    d = decide_claim(sweep(config=cfg), [trial(1), trial(2)], NOW, 3, Suggest())
    assert d.status == "done" and d.finish_sweep and d.reason == "run_cap 2 reached"


def test_an_exhausted_search_finishes_the_sweep():
    d = decide_claim(sweep(), [trial(1)], NOW, 3, Suggest(params={}))
    assert d == ClaimDecision("done", "search space exhausted", finish_sweep=True)


def test_the_search_sees_requeued_trials_as_pending():
    lost = trial(2, "running", worker="w9", lease_expires=NOW - 1, attempts=2)  # crashed now
    s = Suggest()
    decide_claim(sweep(), [trial(1), lost], NOW, 3, s)
    assert [(t.name, t.state) for t in s.seen] == [("t-001", "finished"), ("t-002", "crashed")]
    assert lost.state == "running"  # the caller's records are not changed
