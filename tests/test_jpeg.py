"""The JPEG path: real JPEG files made here with Pillow, decoded, preprocessed, run and
scored, every stage timed (``densebench.imaging``), in the closed loop and under LoadGen."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densebench import parity
from densebench.imaging import sources
from densebench.imaging.pipeline import STAGES

TINY = ["-m", "densenet-tiny", "--image-size", "32", "--warmup", "1", "--repeats", "1",
        "--device", "cpu"]
SIZES = [(80, 60), (120, 90), (64, 64), (50, 75)]


def write_jpegs(folder: Path, count: int, seed: int = 0, sizes=SIZES) -> list[Path]:
    """``count`` real JPEG files at a few sizes (smooth colours with grain, like photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        base = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-8, 8, (h, w, 3)), 0, 255)
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(arr.astype(np.uint8)).save(path, "JPEG", quality=85)
        out.append(path)
    return out


def cells_of(run_json: dict, workdir: Path) -> list[dict]:
    """The stored cells of a run (with their raw samples)."""
    path = workdir / "runs" / run_json["run"] / "cells.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_json(cli, *args):
    r = cli("run", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_jpeg_folder_to_top5_stages_add_up_and_match_the_tensor_path(cli, workdir):
    write_jpegs(workdir / "photos", 10)
    summary = run_json(cli, *TINY, "-v", "eager", "-b", "4", "--mode", "e2e-jpeg",
                       "--input", f"jpeg:{workdir / 'photos'}", "--iters", "12")
    (cell,) = cells_of(summary, workdir)
    assert cell["status"] == "ok" and cell["mode"] == "e2e-jpeg"
    assert cell["axes"] == {"decode_workers": 0}
    p = cell["pipeline"]
    assert p["images"] == 12 * 4 and p["batches"] == 12
    assert p["source"]["images"] == 10 and p["unreadable"]["count"] == 0
    # every image's stages are contiguous: their means add up to its mean latency
    total = sum(p["stages"][s]["mean_ms"] for s in STAGES)
    assert total == pytest.approx(p["latency"]["mean_ms"], rel=0.01)
    # ... and that latency is what the loop measured independently between batches (with
    # no decode workers each batch starts after the one before: an image's latency is its
    # batch's time); 10% covers the loop's own bookkeeping between the two clocks
    assert p["latency"]["mean_ms"] == pytest.approx(np.mean(cell["samples_ms"]), rel=0.1)
    assert sum(p["stages"][s].get("share", 0) for s in STAGES) == pytest.approx(1, abs=0.01)
    assert p["bottleneck"]["stage"] in STAGES and p["advice"]
    # Pillow is the tensor path's decoder: the inputs are the same, so are eager's logits
    dec = p["decoder_parity"]
    assert dec["max_abs_input_difference"] == 0 and dec["max_abs_error"] == 0
    assert parity.within("fp32", cell["parity"]) is True
    shown = cli("show", summary["run"])
    assert "where the time goes" in shown.stdout and "bottleneck" in shown.stdout


def test_slow_decoder_is_the_bottleneck_and_decode_workers_raise_throughput(cli, workdir,
                                                                             monkeypatch):
    # sleep: 4 ms + 1 ms per image, 8 ms a batch of 4; slow-pil: 8 ms per image, 32 a batch.
    # With no decode worker a batch costs 32 + 8 ms; with 4 workers the decoding of the
    # next batch (8 ms) hides behind this one's 8: the ideal ratio is 5, at least 2 here
    monkeypatch.setenv("SLEEPY_DECODE_MS", "8")
    write_jpegs(workdir / "photos", 8)
    # pool-tiny: the model's own logits cost microseconds, so the runtime's time is its sleep
    summary = run_json(cli, "-m", "pool-tiny", "--warmup", "1", "--repeats", "1", "--device",
                       "cpu", "-v", "sleep", "-b", "4", "--mode", "e2e-jpeg",
                       "--input", f"jpeg:{workdir / 'photos'}", "--decoder", "slow-pil",
                       "--decode-workers", "0,4", "--iters", "15")
    by_workers = {c["axes"]["decode_workers"]: c for c in cells_of(summary, workdir)}
    serial, pooled = by_workers[0]["pipeline"], by_workers[4]["pipeline"]
    assert serial["bottleneck"]["stage"] == "decode"
    assert serial["stages"]["decode"]["p50_ms"] >= 8  # a sleep never returns early
    assert serial["stages"]["compute"]["p50_ms"] >= 8
    assert any("--decode-workers" in tip for tip in serial["advice"])
    # with workers the decode side's work is shared by them: judged side against side
    assert pooled["decode_workers"] == 4 and pooled["bottleneck"]["side"] != "serial"
    rate = {n: c["stats"]["throughput"] for n, c in by_workers.items()}
    assert rate[4] / rate[0] >= 2, rate
    shown = cli("show", summary["run"]).stdout
    assert "bottleneck decode" in " ".join(shown.split())


def test_unreadable_jpegs_are_counted_strict_refuses_them_and_an_empty_folder_is_one_error(
        cli, workdir):
    good = write_jpegs(workdir / "photos", 5)
    data = good[0].read_bytes()
    (workdir / "photos" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (workdir / "photos" / "not-a-jpeg.jpg").write_bytes(b"this is text, not an image")
    args = [*TINY, "-v", "eager", "-b", "2", "--mode", "e2e-jpeg", "--iters", "3",
            "--input", f"jpeg:{workdir / 'photos'}"]
    summary = run_json(cli, *args)
    (cell,) = cells_of(summary, workdir)
    bad = cell["pipeline"]["unreadable"]
    assert bad["count"] == 2 and cell["pipeline"]["source"]["images"] == 5
    assert {e.split(":")[0] for e in bad["examples"]} == {"truncated.jpg", "not-a-jpeg.jpg"}
    assert "could not be decoded" in " ".join(cli("show", summary["run"]).stdout.split())
    runs_before = sorted((workdir / "runs").iterdir())
    r = cli("run", *args, "--strict")
    assert r.exit_code != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot be decoded" in r.stderr
    assert "drop --strict" in r.stderr
    assert sorted((workdir / "runs").iterdir()) == runs_before  # nothing created, or lost
    (workdir / "empty").mkdir()
    r = cli("run", *TINY, "-v", "eager", "--mode", "e2e-jpeg", "--input",
            f"jpeg:{workdir / 'empty'}")
    assert r.exit_code != 0 and "holds no JPEG files" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("run", *TINY, "-v", "eager", "--input", f"jpeg:{workdir / 'photos'}")
    assert r.exit_code == 2 and "--mode e2e-jpeg" in r.stderr


def test_synthetic_jpegs_are_encoded_once_seeded_and_kept_in_the_cache(tmp_path):
    a = sources.resolve("jpeg:synthetic:96x72", tmp_path / "cache-a")
    b = sources.resolve("jpeg:synthetic:96x72", tmp_path / "cache-b")
    assert len(a) == sources.SYNTHETIC_COUNT
    assert [p.read_bytes() for p in a.files] == [p.read_bytes() for p in b.files]
    assert a.root.parent == tmp_path / "cache-a" / "jpeg"
    with Image.open(a.files[0]) as im:
        assert im.format == "JPEG" and im.size == (96, 72)
    # photographs compress to a few bits per pixel, not to almost nothing, nor to noise
    bits = 8 * np.mean([p.stat().st_size for p in a.files]) / (96 * 72)
    assert 0.5 < bits < 8, bits
    stamp = a.files[0].stat().st_mtime_ns
    again = sources.resolve("jpeg:synthetic:96x72", tmp_path / "cache-a")
    assert again.files == a.files and a.files[0].stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="16 to"):
        sources.resolve("jpeg:synthetic:5x5", tmp_path)


def _labelled_folder(root: Path, classes: int, per_class: int) -> None:
    for c in range(classes):
        write_jpegs(root / f"class{c:02d}", per_class, seed=c)


def _expected_accuracy(root: Path, num_classes: int) -> tuple[float, float]:
    """Top-1 and top-5 computed here, without densebench's pipeline: Pillow, the ImageNet
    recipe at 32 px written out, and the model's own weights."""
    from torchvision.transforms import v2 as T

    from densebench.models import load_model

    tf = T.Compose([T.ToImage(), T.Resize(int(round(32 * 256 / 224)), antialias=True),
                    T.CenterCrop(32), T.ToDtype(torch.float32, scale=True),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    module = load_model("densenet-tiny", "random", num_classes).module
    top1 = top5 = n = 0
    for label, d in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(d.glob("*.jpg")):
            with Image.open(f) as im:
                x = tf(im.convert("RGB"))[None]
            with torch.inference_mode():
                top = module(x).topk(5, 1).indices[0].tolist()
            top1 += top[0] == label
            top5 += label in top
            n += 1
    return top1 / n, top5 / n


def test_top1_and_top5_on_a_labelled_folder_closed_loop_and_loadgen_accuracy(cli, workdir):
    _labelled_folder(workdir / "labelled", classes=10, per_class=2)
    expected = _expected_accuracy(workdir / "labelled", 10)
    args = [*TINY, "-v", "eager", "--num-classes", "10", "--mode", "e2e-jpeg",
            "--input", f"imagefolder:{workdir / 'labelled'}"]
    summary = run_json(cli, *args, "-b", "4", "--iters", "2")
    (cell,) = cells_of(summary, workdir)
    acc = cell["accuracy"]
    assert acc["images"] == 20
    assert (acc["top1"], acc["top5"]) == pytest.approx(expected)
    assert 0 < acc["top5"] < 1  # ten classes: the check can tell top-5 from everything


@pytest.mark.loadgen
def test_loadgen_accuracy_scores_top5_on_the_jpeg_path(cli, workdir):
    pytest.importorskip("mlperf_loadgen")
    _labelled_folder(workdir / "labelled", classes=10, per_class=2)
    expected = _expected_accuracy(workdir / "labelled", 10)
    summary = run_json(cli, *TINY, "-v", "eager", "--num-classes", "10", "--mode",
                       "e2e-jpeg", "--input", f"imagefolder:{workdir / 'labelled'}",
                       "--scenario", "offline", "--accuracy", "--max-batch", "4")
    (cell,) = cells_of(summary, workdir)
    assert cell["status"] == "ok", cell["error"]
    acc = cell["accuracy"]
    assert acc["images"] == 20 and (acc["top1"], acc["top5"]) == pytest.approx(expected)
    assert parity.within("fp32", cell["parity"]) is True


@pytest.mark.loadgen
def test_loadgen_server_and_offline_decode_jpeg_bytes_in_the_system_under_test(
        cli, workdir, monkeypatch):
    pytest.importorskip("mlperf_loadgen")
    monkeypatch.setenv("SLEEPY_DECODE_MS", "3")
    write_jpegs(workdir / "photos", 12)
    common = [*TINY, "-v", "sleep", "--mode", "e2e-jpeg", "--decoder", "slow-pil",
              "--input", f"jpeg:{workdir / 'photos'}", "--max-batch", "4",
              "--duration", "1"]
    server = run_json(cli, *common, "--scenario", "server", "--target-qps", "20",
                      "--min-queries", "30", "--decode-workers", "0,2")
    offline = run_json(cli, *common, "--scenario", "offline", "--expected-qps", "50")
    for cell in cells_of(server, workdir) + cells_of(offline, workdir):
        assert cell["status"] == "ok", cell["error"]
        lg, p = cell["loadgen"], cell["pipeline"]
        # every sample LoadGen was answered went through the pipeline, timed
        answered = sum(int(b) * n for b, n in lg["batch_sizes"].items())
        assert p["images"] == answered > 0
        assert p["stages"]["decode"]["mean_ms"] >= 3  # the decoder's known sleep
        assert p["source"]["images"] == 12
        # LoadGen's latency starts when it issues a sample: it includes the decoding, so
        # its mean is no shorter than the decode stage's plus the model's known 5 ms
        assert cell["stats"]["mean_ms"] >= p["stages"]["decode"]["mean_ms"] + 5
    assert {c["axes"]["decode_workers"] for c in cells_of(server, workdir)} == {0, 2}
    logs = {c["loadgen"]["logs"]["mlperf_log_detail.txt"] for c in cells_of(server, workdir)}
    assert len(logs) == 2  # each cell keeps its own LoadGen logs
    assert os.path.isfile(workdir / "runs" / server["run"] / sorted(logs)[0])


def test_jpeg_settings_need_the_jpeg_mode_and_valid_values(cli, workdir):
    for args, words in [
        (["--decode-workers", "1"], "--mode e2e-jpeg"),
        (["--mode", "e2e-jpeg", "--decode-workers", "-1"], "0 to 256"),
        (["--mode", "e2e-jpeg", "--decode-workers", "1,1"], "more than once"),
        (["--mode", "e2e-jpeg", "--decoder", "nope"], "decoder 'nope' is unknown"),
        (["--mode", "e2e-jpeg", "--input", "png:/x"], "jpeg:PATH"),
        (["--mode", "e2e-jpeg", "--decoder", "torchvision-cuda"], "CUDA"),
    ]:
        r = cli("run", *TINY, "-v", "eager", *args)
        assert r.exit_code != 0, args
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (workdir / "runs").exists() or not list((workdir / "runs").iterdir())


@pytest.mark.slow
def test_densenet121_jpeg_path_with_torchvision_decoder_rounds_within_the_decoders_share(
        cli, workdir):
    """At 224 px with the weights' own transforms, Pillow resizes the PIL image and
    torchvision's decoder hands a tensor to the tensor resize: the inputs differ by their
    rounding, and the decoder's part is measured apart from the variant's."""
    write_jpegs(workdir / "photos", 4, sizes=[(500, 375), (375, 500)])
    summary = run_json(cli, "-m", "densenet121", "--warmup", "1", "--repeats", "1",
                       "--device", "cpu", "-v", "eager", "-b", "2", "--iters", "2",
                       "--mode", "e2e-jpeg", "--input", f"jpeg:{workdir / 'photos'}",
                       "--decoder", "torchvision")
    (cell,) = cells_of(summary, workdir)
    dec = cell["pipeline"]["decoder_parity"]
    assert 0 < dec["max_abs_input_difference"] < 0.5  # rounding, not another image
    assert dec["cosine_similarity_min"] > 0.99
    assert parity.within("fp32", cell["parity"]) is True  # the variant's own is exact
    with Image.open(io.BytesIO((workdir / "photos" / "img000.jpg").read_bytes())) as im:
        assert im.size == (500, 375)


def test_search_leaves_the_decode_workers_cores_out_of_its_splits(cli):
    from densebench.processes import usable_cores

    def splits(*extra):
        r = cli("search", "-m", "densenet-tiny", "-v", "eager", "--latency-budget", "50ms",
                "--device", "cpu", "--dry-run", "--json", *extra)
        assert r.exit_code == 0, r.stderr
        return json.loads(r.stdout)["splits"]

    cores = usable_cores()
    plain = splits()
    jpeg = splits("--input", "jpeg:synthetic:64x48", "--decode-workers", "1")
    assert max(s["instances"] * s["threads"] for s in plain) == cores
    assert max(s["instances"] * s["threads"] for s in jpeg) == max(1, cores - 1)
    r = cli("search", "-m", "densenet-tiny", "-v", "eager", "--latency-budget", "50ms",
            "--decode-workers", "1", "--dry-run")
    assert r.exit_code == 2 and "--input" in r.stderr


@pytest.mark.loadgen
def test_search_on_the_jpeg_path_times_the_decoder_in_each_call(cli, workdir, monkeypatch):
    pytest.importorskip("mlperf_loadgen")
    monkeypatch.setenv("SLEEPY_DECODE_MS", "3")
    write_jpegs(workdir / "photos", 8)
    # a generous budget: a loaded host's stalls in the screened calls must not leave no rate
    # to predict (and so nothing to verify)
    r = cli("search", *TINY[:4], "--device", "cpu", "-v", "sleep", "--latency-budget",
            "300ms", "--percentile", "90", "--max-batch", "1", "--instances", "1",
            "--input", f"jpeg:{workdir / 'photos'}", "--decoder", "slow-pil",
            "--screen-time", "1", "--probe-duration", "1", "--min-queries", "80",
            "--verify", "1", "--max-time", "120", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    (screened,) = res["screened"]
    # a call answers one sample: the decoder's known 3 ms and the runtime's 4 + 1 ms
    assert screened["search"]["one_sample_ms"] >= 8
    cells = cells_of(res, workdir)
    verified = [c for c in cells if c["axes"].get("search") == "verify"]
    assert verified and all(c["mode"] == "e2e-jpeg" for c in cells)
    probes = [json.loads(line) for line in
              (workdir / "runs" / res["run"] / "probes.jsonl").read_text().splitlines()]
    assert probes, (res["predictions"], res["combinations"])
    assert all(p["pipeline"]["stages"]["decode"]["mean_ms"] >= 3 for p in probes)
