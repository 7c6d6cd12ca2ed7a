from __future__ import annotations

import json
import math
import os
import pickle
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from densebench.data import Source, load
from densebench.models import load_model
from densebench.parity import ParityAccumulator
from densebench.results.store import RunStore
from densebench.scenarios.eval import INPUTS, topk_correct, wilson_interval

from .conftest import blocked_at, run_cli_process, wait_for

SIZE = 32


def _png_folder(root, per_class=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                d / f"img{i}.png")
    return root


def _cifar(root, n=20, seed=0, meta=True):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    # the official files are Python 2 pickles: their keys load as str with latin1
    batch = {"batch_label": "testing batch 1 of 1",
             "data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
             "labels": [int(x) for x in rng.integers(0, 10, n)],
             "filenames": [f"img{i}.png" for i in range(n)]}
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    if meta:
        with open(d / "batches.meta", "wb") as f:
            pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                         "dog", "frog", "horse", "ship", "truck"]}, f)
    return root


def test_wilson_interval_hand_computed():
    lo, hi = wilson_interval(8, 10)
    # z=1.96, p=0.8, n=10: centre 0.7188, half 0.2288 (standard table values)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    lo, hi = wilson_interval(500, 1000)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 1000), rel=0.01)


def test_topk_and_parity_hand_computed():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],
                           [0.8, 0.1, 0.05, 0.03, 0.02, 0.0],
                           [-1.0, 0.1, 0.2, 0.3, 0.4, 0.9]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, 1) == 1
    assert topk_correct(logits, labels, 5) == 2  # row 3: label 0 is the lowest of six
    acc = ParityAccumulator()
    acc.add(logits + torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), logits)
    r = acc.result()
    assert r["max_abs_error"] == pytest.approx(1.0)
    assert r["top1_agreement"] == pytest.approx(1 / 3)  # rows 1 and 2 flip to class 5
    assert r["images"] == 3


def test_imagefolder_and_cifar_loaders(workdir):
    ds = load(Source.parse(f"imagefolder:{_png_folder(workdir / 'imgs')}"), SIZE)
    assert ds.num_classes == 3 and len(ds) == 9
    x, y = next(ds.batches(4))
    assert x.shape == (4, 3, SIZE, SIZE) and y.tolist() == [0, 0, 0, 1]
    assert abs(float(x.mean())) < 1.0  # normalised
    cif = load(Source.parse(f"cifar10:{_cifar(workdir / 'c')}"), 64, limit=5)
    assert cif.num_classes == 10 and len(cif) == 5
    x, y = next(cif.batches(5))
    assert x.shape == (5, 3, 64, 64)  # 32 px upscaled
    assert any("checksum" in n for n in cif.notes)


@pytest.mark.slow
def test_labels_from_the_fp32_model_give_eager_100_and_others_their_parity(cli, workdir):
    """Each image is filed under the class the fp32 model predicts: eager must score 100%."""
    src = _png_folder(workdir / "raw", per_class=8, classes=1, seed=3)
    ds = load(Source.parse(f"imagefolder:{src}"), SIZE)
    model = load_model("densenet-tiny", "random:0", num_classes=10).module
    files = [p for p, _ in ds.items]
    preds = []
    for x, _ in ds.batches(8):
        preds += model(x).argmax(1).tolist()
    labelled = workdir / "labelled"
    for c in range(10):
        (labelled / f"class_{c}").mkdir(parents=True)
    for f, p in zip(files, preds, strict=True):
        (labelled / f"class_{p}" / f"{len(list(labelled.rglob('*.png')))}.png").write_bytes(
            open(f, "rb").read())
    r = cli("eval", "--device", "cpu",
            "-m", "densenet-tiny", "--num-classes", "10", "--image-size", SIZE,
            "--data", f"imagefolder:{labelled}", "-v", "eager,onnxruntime,onnxruntime-int8",
            "-b", "3", "--json")
    assert r.exit_code == 0, r.stderr
    cells = {c["variant"]: c for c in json.loads(r.stdout)["cells"]}
    assert cells["eager"]["accuracy"]["top1"] == 1.0
    assert cells["eager"]["accuracy"]["images"] == 8
    for v in ("onnxruntime", "onnxruntime-int8"):
        assert cells[v]["accuracy"]["top1"] == pytest.approx(cells[v]["parity"]["top1_agreement"])
    assert cells["eager"]["accuracy"]["meaningful"] is False  # random weights
    assert "random weights" in cells["eager"]["accuracy"]["not_meaningful_because"]
    table = cli("eval", "--device", "cpu",
                "-m", "densenet-tiny", "--num-classes", "10", "--image-size", SIZE,
                "--data", f"imagefolder:{labelled}", "-v", "eager").stdout
    assert "n/m (random weights)" in table


@pytest.mark.slow
def test_meaningful_accuracy_with_a_weights_file_and_stored_run(cli, workdir):
    model = load_model("densenet-tiny", "random:4", num_classes=10).module
    wpath = workdir / "trained.pt"
    torch.save(model.state_dict(), wpath)
    data = _cifar(workdir / "cifar", n=12)
    r = cli("eval", "--device", "cpu",
            "-m", "densenet-tiny", "--weights", wpath, "--num-classes", "10",
            "--image-size", SIZE, "--data", f"cifar10:{data}", "-v", "eager,onnxruntime",
            "-b", "5", "--name", "ev", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    acc = out["cells"][0]["accuracy"]
    assert acc["meaningful"] is True and acc["images"] == 12
    lo, hi = acc["top1_ci"]
    assert lo <= acc["top1"] <= hi
    rec = RunStore().load("ev")
    assert rec.data["kind"] == "eval" and rec.data["data"]["images"] == 12
    import pandas as pd

    csv = pd.read_csv(rec.path / "results.csv")
    assert csv["accuracy_top1"].notna().all() and len(csv) == 2
    assert cli("show", "ev").exit_code == 0
    assert not (rec.path / INPUTS).exists()  # the workers' copy of the images is gone


def test_synthetic_is_parity_only(cli, workdir):
    r = cli("eval", "--device", "cpu",
            "-m", "densenet-tiny", "--image-size", SIZE, "--data", "synthetic",
            "--limit", "6", "-v", "eager,torchscript", "--json")
    assert r.exit_code == 0, r.stderr
    cells = json.loads(r.stdout)["cells"]
    assert all(c["accuracy"] is None for c in cells)
    assert cells[1]["parity"]["images"] == 6 and cells[1]["parity"]["max_abs_error"] < 1e-4


@pytest.mark.slow
def test_eval_parity_is_judged_against_its_threshold(cli, workdir):
    """An fp32 runtime within 1e-4 of eager is within its threshold; one whose logits are
    moved by 1e-3 of the largest (the test runtime `perturbed`) is beyond it, in the
    stored run's table and in the eval table."""
    r = cli("eval", "-m", "densenet-tiny", "--image-size", SIZE, "--data", "synthetic",
            "--limit", "6", "-b", "3", "-v", "eager,torchscript,perturbed", "--device", "cpu",
            "--name", "judged", "--json")
    assert r.exit_code == 0, r.stderr
    cells = {c["variant"]: c["parity"] for c in json.loads(r.stdout)["cells"]}
    scale = cells["torchscript"]["max_abs_reference"]
    assert scale > 0 and cells["torchscript"]["max_abs_error"] / scale < 1e-4
    assert cells["perturbed"]["max_abs_error"] / scale == pytest.approx(1e-3, rel=0.01)
    shown = {c["variant"]: c for c in json.loads(cli("show", "judged", "--json").stdout)
             ["cells"]}
    assert shown["eager"]["parity_within"] is True
    assert shown["torchscript"]["parity_within"] is True
    assert shown["perturbed"]["parity_within"] is False
    table = cli("show", "judged").stdout
    assert "perturbed batch 3: logits differ from fp32 by more than the fp32 threshold" \
        in table and "torchscript batch 3: logits differ" not in table
    table = cli("eval", "-m", "densenet-tiny", "--image-size", SIZE, "--data", "synthetic",
                "--limit", "6", "-b", "3", "-v", "torchscript,perturbed",
                "--device", "cpu").stdout
    assert "perturbed: logits beyond the fp32 threshold (0.0001 of" in table
    assert "torchscript: logits beyond" not in table


def test_unreadable_images_are_counted_or_strict(cli, workdir):
    root = _png_folder(workdir / "imgs", per_class=2, classes=10)
    (root / "class_0" / "broken.png").write_bytes(b"not a png")
    args = ["eval", "--device", "cpu",
            "-m", "densenet-tiny", "--num-classes", "10", "--image-size", SIZE,
            "--data", f"imagefolder:{root}", "-v", "eager"]
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["data"]["unreadable"] == 1 and out["data"]["images"] == 20
    r = cli(*args, "--strict")
    assert r.exit_code == 1 and "unreadable image" in r.stderr and "broken.png" in r.stderr


@pytest.mark.parametrize("make,needle", [
    (lambda w: w / "missing", "is not a directory"),
    (lambda w: (w / "empty").mkdir() or w / "empty", "has no class folders"),
    (lambda w: (w / "e2" / "cat").mkdir(parents=True) or w / "e2", "holds no images"),
])
def test_bad_imagefolders(cli, workdir, make, needle):
    r = cli("eval", "--device", "cpu", "-m", "densenet-tiny", "--image-size", SIZE, "--data",
            f"imagefolder:{make(workdir)}", "-v", "eager")
    assert r.exit_code == 1 and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_cifar_and_class_mismatch(cli, workdir):
    base = ["eval", "--device", "cpu", "-m", "densenet-tiny", "--image-size", SIZE, "-v", "eager"]
    r = cli(*base, "--data", f"cifar10:{workdir / 'nothing'}")
    assert r.exit_code == 1 and "--download" in r.stderr
    bad = workdir / "bad" / "cifar-10-batches-py"
    bad.mkdir(parents=True)
    (bad / "test_batch").write_bytes(b"garbage")
    r = cli(*base, "--data", f"cifar10:{workdir / 'bad'}")
    assert r.exit_code == 1 and "malformed" in r.stderr
    good = _cifar(workdir / "good")
    r = cli(*base, "--data", f"cifar10:{good}")  # 1000-class model, 10-class data
    assert r.exit_code == 1
    assert "1000 classes" in r.stderr and "--num-classes 10" in r.stderr
    r = cli(*base, "--data", "bogus:thing")
    assert r.exit_code == 2 and "imagefolder:PATH" in r.stderr
    assert cli(*base, "--data", "synthetic", "--limit", "0").exit_code == 2


def test_eval_runs_each_variant_in_its_own_worker_a_crash_fails_only_its_cell(cli, workdir,
                                                                            monkeypatch):
    """eval goes through the one pipeline: a variant whose worker process dies (the test
    runtime's sleep, killed like a segfault) fails its own cell, and the next variant is
    still evaluated, in a worker of its own."""
    monkeypatch.setenv("SLEEPY_CRASH", "sleep")
    r = cli("eval", "-m", "pool-tiny", "--data", "synthetic", "--limit", "4", "-b", "2",
            "-v", "sleep,eager,perturbed", "--device", "cpu", "--name", "crashy", "--json")
    assert r.exit_code == 0, r.stderr
    cells = {c["variant"]: c for c in json.loads(r.stdout)["cells"]}
    assert cells["sleep"]["status"] == "failed" and "139" in cells["sleep"]["error"]
    assert cells["eager"]["status"] == "ok" and cells["perturbed"]["status"] == "ok"
    assert cells["eager"]["parity"]["images"] == 4
    rec = RunStore().load("crashy")
    assert rec.data["kind"] == "eval" and rec.status == "complete"
    pids = {c.variant: c.worker.get("pid") for c in rec.cells if c.ok}
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()


@pytest.mark.slow
def test_ctrl_c_during_eval_keeps_the_finished_variants(workdir, tmp_path):
    env, ready = blocked_at("sleep", "prepare", tmp_path)
    p = run_cli_process("eval", "-m", "pool-tiny", "--data", "synthetic", "--limit", "4",
                        "-b", "2", "-v", "eager,sleep", "--device", "cpu", "--name", "cut",
                        env=env)
    wait_for(ready, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "incomplete" in err, err
    rec = RunStore().load("cut")
    assert rec.status == "incomplete"
    assert [(c.variant, c.status) for c in rec.cells] == [("eager", "ok")]
    assert not (rec.path / INPUTS).exists()
