"""Checkpoints written beside training (cvtrain.checkpoint.Writer): one at a time, of the state as it
was when the epoch ended, errors raised in the training thread, and the run waits for the last write."""
import threading

import pytest
import torch

from cvtrain import checkpoint as ckpt


class _Cfg:
    def to_flat_dict(self):
        return {"model_name": "tiny"}


def _parts():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    state = ckpt.TrainState(epoch=1, best_val_f1=0.5, best_epoch=1, history=[{"epoch": 1}])
    return model, opt, state


def _gated_write(monkeypatch):
    """ckpt._write blocked until ``release`` is set; ``started`` is set when a write begins."""
    started, release, real = threading.Event(), threading.Event(), ckpt._write
    order = []

    def gated(path, obj):
        order.append(("start", path.name))
        started.set()
        assert release.wait(30), "the test never released the write"
        real(path, obj)
        order.append(("end", path.name))
    monkeypatch.setattr(ckpt, "_write", gated)
    return started, release, order


def test_the_checkpoint_holds_the_state_at_the_epochs_end_while_training_changes_it(tmp_path, monkeypatch):
    model, opt, state = _parts()
    started, release, _ = _gated_write(monkeypatch)
    writer = ckpt.Writer()
    weights = model.weight.detach().clone()
    moment = opt.state[model.weight]["exp_avg"].clone()
    ckpt.save_epoch(tmp_path, True, True, model, opt, None, None, state, _Cfg(), {"num_classes": 3},
                    writer=writer)
    assert started.wait(30)  # the write is in flight; training goes on meanwhile
    with torch.no_grad():
        model.weight.add_(1.0)
    opt.state[model.weight]["exp_avg"].add_(1.0)
    state.history.append({"epoch": 2})
    state.epoch = 2
    release.set()
    writer.wait()
    saved = ckpt.read(tmp_path / "last.pt")
    assert torch.equal(saved["model"]["weight"], weights)
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], moment)
    assert saved["state"]["history"] == [{"epoch": 1}] and saved["state"]["epoch"] == 1
    assert (tmp_path / "best.pt").samefile(tmp_path / "last.pt")


def test_the_next_write_waits_for_the_one_in_flight(tmp_path, monkeypatch):
    model, opt, state = _parts()
    started, release, order = _gated_write(monkeypatch)
    writer = ckpt.Writer()
    args = (model, opt, None, None, state, _Cfg(), {"num_classes": 3})
    ckpt.save_epoch(tmp_path, False, True, *args, writer=writer)
    assert started.wait(30)
    second_submitted = threading.Event()

    def next_epoch():
        ckpt.save_epoch(tmp_path, False, True, *args, writer=writer)
        second_submitted.set()
    t = threading.Thread(target=next_epoch)
    t.start()
    # While the first write is held, the second cannot start: the only write begun is the first.
    assert not second_submitted.wait(0.2)
    assert order == [("start", "last.pt")]
    release.set()
    t.join(30)
    writer.wait()
    assert order == [("start", "last.pt"), ("end", "last.pt"), ("start", "last.pt"), ("end", "last.pt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_a_failed_write_fails_the_training_thread_at_its_next_wait(tmp_path, monkeypatch):
    model, opt, state = _parts()

    def full_disk(path, obj):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt, "_write", full_disk)
    writer = ckpt.Writer()
    ckpt.save_epoch(tmp_path, False, True, model, opt, None, None, state, _Cfg(), {"num_classes": 3},
                    writer=writer)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # raised once: the writer is usable again


def test_a_run_ends_with_its_last_checkpoint_written(tiny, monkeypatch):
    """The engine's writes go through the writer, and train() returns only once the last one landed."""
    from cvtrain.engine import train

    seen = []
    real = ckpt.Writer.submit

    def submit(self, job):
        seen.append(threading.current_thread().name)
        real(self, job)
    monkeypatch.setattr(ckpt.Writer, "submit", submit)
    result = train(tiny(epochs=2, keep_checkpoints="last"))
    assert len(seen) == 2
    last = ckpt.read(result.output_dir / "checkpoints" / "last.pt")
    assert last["state"]["epoch"] == 2
    assert [t.name for t in threading.enumerate() if t.name == "cvtrain-checkpoint"] == []
