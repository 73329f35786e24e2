import csv
import subprocess

import numpy as np
import pytest
import torch
from conftest import PY

from cvtrain import data as D
from cvtrain.config import DataConfig
from cvtrain.demo_data import CLASS_NAMES, make_demo_data


def test_demo_data_has_the_competition_layout_and_is_deterministic(tmp_path):
    a = make_demo_data(tmp_path / "a", per_class=2, test_per_class=1, seed=4)
    b = make_demo_data(tmp_path / "b", per_class=2, test_per_class=1, seed=4)
    rows = list(csv.DictReader((a / "train.csv").open()))
    assert set(rows[0]) == {"ID", "target"} and len(rows) == 34
    meta = list(csv.DictReader((a / "meta.csv").open()))
    assert [m["class_name"] for m in meta] == CLASS_NAMES and len(meta) == 17
    assert all((a / "train" / r["ID"]).exists() for r in rows)
    sub = list(csv.DictReader((a / "sample_submission.csv").open()))
    assert len(sub) == 17 and all((a / "test" / r["ID"]).exists() for r in sub)
    assert (a / "train.csv").read_text() == (b / "train.csv").read_text()
    first = rows[0]["ID"]
    assert (a / "train" / first).read_bytes() == (b / "train" / first).read_bytes()


def test_stratified_split_is_seeded_and_keeps_every_class(demo_dir):
    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    assert idx.num_classes == 17 and idx.class_names[0] == CLASS_NAMES[0]
    cfg = DataConfig(data_dir=str(demo_dir), val_fraction=0.2)
    tr1, va1 = D.split_indices(idx.labels, cfg, seed=1)
    tr2, va2 = D.split_indices(idx.labels, cfg, seed=1)
    tr3, va3 = D.split_indices(idx.labels, cfg, seed=2)
    assert np.array_equal(va1, va2) and not np.array_equal(va1, va3)
    assert not set(tr1) & set(va1) and len(tr1) + len(va1) == len(idx.labels)
    assert len(set(np.asarray(idx.labels)[va1])) == 17  # stratified: 17 val images, one per class


def test_kfold_folds_partition_the_data(demo_dir):
    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    vals = [D.split_indices(idx.labels, DataConfig(folds=5, fold=f), seed=0)[1] for f in range(5)]
    allv = np.concatenate(vals)
    assert len(allv) == len(idx.labels) and len(set(allv)) == len(idx.labels)


def test_imagefolder_layout(tmp_path, demo_dir):
    from PIL import Image

    for c in ("cats", "dogs"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(tmp_path / "train" / c / f"{i}.jpg")
    idx = D.load_index(DataConfig(data_dir=str(tmp_path)))
    assert idx.class_names == ["cats", "dogs"] and idx.labels == [0, 0, 0, 1, 1, 1]


def test_cache_is_built_once_and_reused_across_processes(demo_dir, tmp_path):
    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    paths = idx.paths[:10]
    a = D.load_or_build_cache(paths, 32, "pad", tmp_path, progress=False)
    mtime = a.path.stat().st_mtime_ns
    code = ("import sys; from cvtrain import data as D; "
            f"c = D.load_or_build_cache({paths!r}, 32, 'pad', {str(tmp_path)!r}, progress=False); "
            "print(c.path, int(c.array.sum()))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(a.path) and int(out[1]) == int(np.asarray(a.array).sum())
    assert a.path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert isinstance(a.array, np.memmap) and a.array.shape == (10, 32, 32, 3)
    b = D.load_or_build_cache(paths, 48, "pad", tmp_path, progress=False)
    assert b.path != a.path and b.array.shape == (10, 48, 48, 3)
    np.testing.assert_array_equal(a.array[3], D.decode_image(paths[3], 32, "pad"))


def test_corrupt_and_missing_images_are_all_named_or_skipped(demo_dir, tmp_path, tiny):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    rows = list(csv.DictReader((data / "train.csv").open()))
    (data / "train" / rows[0]["ID"]).write_bytes(b"not a jpeg at all")
    (data / "train" / rows[1]["ID"]).unlink()
    cfg = tiny(data_dir=str(data), cache_dir=str(tmp_path / "c"), epochs=1)
    from cvtrain.engine import train

    with pytest.raises(D.DataError) as err:
        train(cfg)
    msg = str(err.value)
    assert "2 image(s) could not be read" in msg and rows[0]["ID"] in msg and rows[1]["ID"] in msg
    assert "--skip_bad_images=True" in msg
    with pytest.warns(UserWarning, match="skipping 2 unreadable"):
        result = train(tiny(data_dir=str(data), cache_dir=str(tmp_path / "c"), epochs=1, skip_bad_images=True))
    assert result.state == "finished"


def test_augmentation_is_deterministic_per_seed_epoch_and_index(demo_dir, cache_dir):
    from cvtrain.config import AugmentConfig

    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    arr = D.load_or_build_cache(idx.paths, 32, "pad", cache_dir, progress=False).array
    strong = AugmentConfig(rotate=1, flip=1, affine=1, blur=1, noise=1, jpeg=1)
    ds = D.CachedImageDataset(arr, idx.labels, range(len(idx.labels)), aug=strong, seed=3)
    x1, y1 = ds[4]
    x2, _ = ds[4]
    ds.set_epoch(1)
    x3, _ = ds[4]
    assert x1.dtype.is_floating_point is False and x1.shape == (3, 32, 32) and y1 == idx.labels[4]
    assert (x1 == x2).all() and not (x1 == x3).all()


def test_a_batch_is_one_slice_of_the_cache_and_equals_its_items(demo_dir, cache_dir):
    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    arr = D.load_or_build_cache(idx.paths, 32, "pad", cache_dir, progress=False).array
    ds = D.CachedImageDataset(arr, idx.labels, [5, 9, 2, 40, 7])
    x, y = ds[[3, 0, 4]]
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 32)
    for k, pos in enumerate((3, 0, 4)):
        img, label = ds[pos]
        assert torch.equal(x[k], img) and int(y[k]) == label


def _epoch_batches(ds, workers: int, epoch: int, aug):
    from cvtrain.loader import DeviceBatches, batch_loader

    g = torch.Generator()
    loader = DeviceBatches(batch_loader(ds, 8, shuffle=True, generator=g, num_workers=workers), "cpu", aug=aug, seed=3)
    out = []
    for e in (0, epoch):  # through the same (persistent) workers: the epoch must still reach the draws
        ds.set_epoch(e)
        g.manual_seed(100 + e)
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return out[1]


def test_device_batches_are_the_same_for_any_worker_count_and_change_with_the_epoch(demo_dir, cache_dir):
    from cvtrain.config import AugmentConfig

    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    arr = D.load_or_build_cache(idx.paths, 32, "pad", cache_dir, progress=False).array
    ds = D.CachedImageDataset(arr, idx.labels, range(30))
    aug = AugmentConfig(rotate=0.5, flip=0.5, affine=0.5, blur=0.5, noise=0.5, jpeg=0.5)
    in_process, two_workers = _epoch_batches(ds, 0, 1, aug), _epoch_batches(ds, 2, 1, aug)
    assert [len(y) for _, y in in_process] == [8, 8, 8, 6] == [len(y) for _, y in two_workers]
    for (xa, ya), (xb, yb) in zip(in_process, two_workers):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    other_epoch = _epoch_batches(ds, 0, 2, aug)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(in_process, other_epoch))
    plain = _epoch_batches(ds, 2, 1, None)  # no augmentation: exactly the cache's images and labels, shuffled
    seen = sorted((xi.permute(1, 2, 0).numpy().tobytes(), int(yi)) for x, y in plain for xi, yi in zip(x, y))
    assert seen == sorted((np.asarray(arr[j]).tobytes(), idx.labels[j]) for j in range(30))
    assert [int(v) for _, y in plain for v in y] != [idx.labels[j] for j in range(30)]  # shuffled


def _rewrite_csv(path, edit):
    rows = list(csv.reader(path.open()))
    edit(rows)
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return rows


def test_ids_reaching_outside_the_data_directory_are_refused_with_their_row(demo_dir, tmp_path):
    import shutil

    from cvtrain.predict import read_test_set

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    (tmp_path / "outside.jpg").write_bytes((data / "train" / next((data / "train").iterdir()).name).read_bytes())

    def poison(rows):
        rows[3][0] = "../../outside.jpg"
        rows[5][0] = str(tmp_path / "outside.jpg")

    _rewrite_csv(data / "train.csv", poison)
    with pytest.raises(D.DataError) as err:
        D.load_index(DataConfig(data_dir=str(data)))
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{data / 'train.csv'}:4: ID '../../outside.jpg'")
    assert lines[1].startswith(f"{data / 'train.csv'}:6: ID '{tmp_path / 'outside.jpg'}'")
    _rewrite_csv(data / "sample_submission.csv", poison)
    with pytest.raises(D.DataError, match=r"sample_submission.csv:4: ID '../../outside.jpg' is not a file name"):
        read_test_set(data)


def test_a_duplicate_id_in_train_csv_is_named_with_its_rows(demo_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    rows = _rewrite_csv(data / "train.csv", lambda rows: rows.__setitem__(7, list(rows[2])))
    with pytest.raises(D.DataError) as err:
        D.load_index(DataConfig(data_dir=str(data)))
    assert str(err.value) == (f"{data / 'train.csv'}: ID {rows[2][0]!r} is listed 2 times (rows 3, 8); "
                              "each image once")


def test_per_sample_cpu_augmentation_changes_with_the_epoch_through_loader_workers(demo_dir, cache_dir):
    """augment_on=cpu augments in the loader's workers: each epoch must reach them (set_epoch runs here)."""
    from cvtrain.config import AugmentConfig
    from cvtrain.loader import batch_loader

    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    arr = D.load_or_build_cache(idx.paths, 32, "pad", cache_dir, progress=False).array
    aug = AugmentConfig(rotate=0.5, flip=0.5, affine=0.5, blur=0.5, noise=0.5, jpeg=0.0)
    ds = D.CachedImageDataset(arr, idx.labels, range(16), aug=aug, seed=3)
    loader = batch_loader(ds, 8, shuffle=False, num_workers=2)  # asks for persistent workers, as ever
    epochs = []
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        epochs.append(torch.cat([x for x, _ in loader]))
    for epoch, got in zip((1, 2), epochs):  # what the dataset draws in this process for that epoch
        ds.set_epoch(epoch)
        assert torch.equal(got, torch.stack([ds[i][0] for i in range(16)]))
    assert not torch.equal(epochs[0], epochs[1])


def test_an_unreadable_test_image_fails_the_run_before_training_or_is_named_and_predicted_blank(demo_dir, tmp_path,
                                                                                               tiny):
    import shutil

    from cvtrain.engine import train

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    ids = [r["ID"] for r in csv.DictReader((data / "sample_submission.csv").open())]
    bad = D.resolve_image(data / "test", ids[1])
    bad.write_bytes(b"not an image")
    out = tmp_path / "run"
    with pytest.raises(D.DataError) as err:
        train(tiny(data_dir=str(data), cache_dir=str(tmp_path / "c"), epochs=1, save_predictions=True,
                   output_dir=str(out)))
    assert "1 test image(s) could not be read" in str(err.value) and str(bad) in str(err.value)
    assert not out.exists(), "the run trained before its test set was checked"
    with pytest.warns(UserWarning, match=f"skipping 1 unreadable test image.*{bad}"):
        result = train(tiny(data_dir=str(data), cache_dir=str(tmp_path / "c"), epochs=1, save_predictions=True,
                            output_dir=str(out), skip_bad_images=True))
    assert result.state == "finished"
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    assert [r["ID"] for r in rows] == ids  # every ID keeps its row: a submission needs them all
