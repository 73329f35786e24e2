"""Objects shaped like wandb's public API (wandb.Api().sweep(...), its runs): the network boundary."""


class FakeRun:
    def __init__(self, name, state, config, summary, created_at):
        self.name, self.id, self.state = name, name + "-id", state
        self.config, self.summary, self.created_at = config, dict(summary), created_at
        self.updates = 0
        self.rows = []

    def update(self):
        self.updates += 1

    def history(self, samples=500, keys=None, x_axis="_step", pandas=True):
        assert pandas is False, "cvsweep reads history as plain rows"
        return list(self.rows)


class FakeSweep:
    def __init__(self, sweep_id, config, runs):
        self.id, self.config, self.runs, self.state = sweep_id, config, runs, "RUNNING"


class FakeApi:
    def __init__(self, sweeps):
        self.sweeps = {s.id: s for s in sweeps}
        self.paths = []

    def sweep(self, path):
        self.paths.append(path)
        return self.sweeps[path.split("/")[-1]]


def fake_api():
    cfg = {"name": "docs", "method": "bayes", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": {"learning_rate": {"min": 1e-5, "max": 1e-2}}}
    runs = [
        FakeRun("r1", "finished", {"learning_rate": 0.001, "_wandb": {}, "epochs": 30},
                {"best_val_f1": 0.71, "_runtime": 10}, "2026-11-27T10:00:00Z"),
        FakeRun("r2", "failed", {"learning_rate": 0.5}, {"reason": "NonFiniteLossError: nan"}, "2026-11-27T10:05:00Z"),
        FakeRun("r3", "finished", {"learning_rate": 0.0003}, {"best_val_f1": 0.83}, "2026-11-27T10:10:00Z"),
        FakeRun("r4", "running", {"learning_rate": 0.002}, {"best_val_f1": 0.40}, "2026-11-27T10:15:00Z"),
    ]
    return FakeApi([FakeSweep("abc123", cfg, runs)])
