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


def test_tta_views_go_through_the_model_together_and_average_as_one_view_at_a_time():
    import timm
    import torch

    from cvtrain.engine import Normalizer
    from cvtrain.predict import predict_probs
    from cvtrain.tta import apply_view

    model = timm.create_model("test_resnet", num_classes=5).eval()
    calls = []
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8).numpy()
    norm = Normalizer(torch.device("cpu"), False)
    views = ["none", "rot90", "rot180", "hflip"]
    got = predict_probs(model, images, norm, views, batch_size=16)
    assert calls == [16, 16, 8]  # 4 images x 4 views, twice, then the last 2 images' 8 views
    with torch.no_grad():
        x = norm(torch.from_numpy(images).permute(0, 3, 1, 2))
        want = sum(torch.softmax(model(apply_view(x, v)), 1) for v in views) / len(views)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
