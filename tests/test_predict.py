import csv

from cvtrain.engine import train
from cvtrain.predict import predict_submission


def test_submission_follows_sample_submission_order_and_shape(tiny, demo_dir, tmp_path):
    result = train(tiny(epochs=1))
    out = predict_submission(str(result.best_checkpoint), str(demo_dir), output=str(tmp_path / "sub.csv"),
                             tta=["none", "rot90", "hflip"], cache_dir=str(tmp_path / "c"))
    sample = list(csv.DictReader((demo_dir / "sample_submission.csv").open()))
    sub = list(csv.DictReader(out.open()))
    assert [r["ID"] for r in sub] == [r["ID"] for r in sample]
    assert list(sub[0]) == ["ID", "target"]
    assert all(0 <= int(r["target"]) < 17 for r in sub)


def test_predict_cli_reports_missing_checkpoint(tmp_path, demo_dir):
    from cvtrain.cli import main

    assert main(["predict", f"--checkpoint={tmp_path / 'nope.pt'}", f"--data_dir={demo_dir}"]) == 2
