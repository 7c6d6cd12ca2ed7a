from __future__ import annotations

import json
import signal

import pytest
import torch

from densebench.artifacts import ArtifactCache
from densebench.errors import ConfigError, CorruptArtifactError
from densebench.exporters import ExportSpec, export_artifact, load_artifact
from densebench.models import load_model
from densebench.parity import fixed_input, kept_reference

from .conftest import TINY_SIZE, run_cli_process, wait_for

TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "int8": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize("fmt,prec", [
    ("torchscript", "fp32"), ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
    ("checkpoint", "fp32"), ("checkpoint", "fp16"), ("aoti", "fp32"),
])
def test_each_format_loads_back_and_matches_eager(tiny_artifacts, fmt, prec):
    art = tiny_artifacts[(fmt, prec)]
    m = art.manifest
    assert m["fields"]["format"] == fmt and m["fields"]["precision"] == prec
    assert m["fields"]["dynamic_axes"] == ["batch"]
    assert set(m["files"]) >= {m["main"]}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in m["files"].values())
    assert m["parity"]["max_abs_error"] < TOLERANCE[prec]
    assert "torch" in m["versions"]
    # dynamic batch: a batch size other than the export's
    ref_model = load_model("densenet-tiny", "random:0").module
    x = fixed_input(3, TINY_SIZE, seed=99)
    out = load_artifact(art, "cpu")(x)
    assert out.shape == (3, 1000)
    assert (out.float() - ref_model(x)).abs().max() < TOLERANCE[prec]
    if prec == "fp32":
        assert (out.argmax(1) == ref_model(x).argmax(1)).all()


@pytest.mark.slow
def test_int8_is_qdq_per_channel_and_records_calibration(tiny_artifacts):
    import onnx

    art = tiny_artifacts[("onnx", "int8")]
    ops = {n.op_type for n in onnx.load(str(art.main_file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    cal = art.fields["calibration"]
    assert cal["source"] == "synthetic" and cal["per_channel"] and cal["format"] == "QDQ"
    assert art.fields["versions"]["onnxruntime"]


def test_key_changes_with_every_field(shared_cache):
    from densebench.exporters import resolve

    base = ExportSpec("densenet-tiny", "onnx", image_size=TINY_SIZE)
    keys = set()
    for spec in [base, ExportSpec("densenet-tiny", "onnx", image_size=64),
                 ExportSpec("densenet-tiny", "onnx", image_size=TINY_SIZE, batch_size=4),
                 ExportSpec("densenet-tiny", "onnx", image_size=TINY_SIZE, opset=19),
                 ExportSpec("densenet-tiny", "onnx", "fp16", image_size=TINY_SIZE),
                 ExportSpec("densenet-tiny", "onnx", weights="random:1", image_size=TINY_SIZE),
                 ExportSpec("densenet-tiny", "onnx", num_classes=10, image_size=TINY_SIZE),
                 ExportSpec("densenet-tiny", "torchscript", image_size=TINY_SIZE)]:
        keys.add(json.dumps(resolve(spec)[2], sort_keys=True))
    assert len(keys) == 8
    assert resolve(base)[2] == resolve(ExportSpec("densenet-tiny", "onnx",
                                                  image_size=TINY_SIZE))[2]


def test_fixed_batch_export(workdir):
    art, _ = export_artifact(ExportSpec("densenet-tiny", "onnx", batch_size=4,
                                        image_size=TINY_SIZE))
    assert art.fields["input_shape"] == [4, 3, TINY_SIZE, TINY_SIZE]
    assert art.fields["dynamic_axes"] == []
    sess = load_artifact(art).session
    assert sess.get_inputs()[0].shape[0] == 4


def test_second_export_is_a_cache_hit(cli, workdir):
    args = ["export", "-m", "densenet-tiny", "-f", "torchscript", "--image-size", TINY_SIZE]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert "exported in" in first.stdout
    entries = ArtifactCache().entries()
    assert len(entries) == 1
    mtime = entries[0].main_file.stat().st_mtime_ns
    second = cli(*args)
    assert second.exit_code == 0
    assert second.stdout.startswith("cached: ")
    assert str(entries[0].main_file) in second.stdout
    assert entries[0].main_file.stat().st_mtime_ns == mtime
    assert len(ArtifactCache().entries()) == 1


@pytest.mark.slow
def test_two_processes_exporting_the_same_key_leave_one_entry(workdir):
    args = ["export", "-m", "densenet-tiny", "-f", "onnx", "--image-size", TINY_SIZE, "--json"]
    procs = [run_cli_process(*args) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(o[0]) for o in outs]
    assert sorted(r["cached"] for r in results) == [False, True]
    entries = ArtifactCache().entries()
    assert len(entries) == 1
    entries[0].verify()
    assert not any((workdir / "artifacts" / ".tmp").iterdir())


def test_corrupted_file_is_detected_and_force_rebuilds(cli, workdir):
    args = ["export", "-m", "densenet-tiny", "-f", "onnx", "--image-size", TINY_SIZE]
    assert cli(*args).exit_code == 0
    art = ArtifactCache().entries()[0]
    data = bytearray(art.main_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.main_file.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError):
        art.verify()
    r = cli(*args)
    assert r.exit_code == 1
    assert "does not match its checksum" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    v = cli("artifacts", "verify")
    assert v.exit_code == 1 and "1 corrupt" in v.stdout
    r = cli(*args, "--force")
    assert r.exit_code == 0 and "exported" in r.stdout
    assert cli("artifacts", "verify").exit_code == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_export_leaves_nothing_in_the_cache(workdir, sig, tmp_path):
    """Interrupted inside the exporter (the test model blocks in its trace and says so in a
    file): Ctrl-C removes the half-built entry, a kill leaves it for the next build to
    sweep; neither leaves an entry in the cache."""
    ready = tmp_path / "in-the-export"
    p = run_cli_process("export", "-m", "export-probe", "-f", "torchscript",
                        env={"EXPORT_PROBE": f"block:{ready}"})
    wait_for(ready, p)
    tmp = workdir / "artifacts" / ".tmp"
    assert [d for d in tmp.iterdir() if not d.name.startswith("probe-")]  # half-built
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    assert ArtifactCache().entries() == []
    if sig == signal.SIGINT:
        assert "interrupted" in err
        assert not any(tmp.iterdir())
    # the next export of the same key sweeps what a killed builder left and succeeds
    art, cached = export_artifact(ExportSpec("densenet-tiny", "torchscript", image_size=TINY_SIZE))
    assert not cached
    assert [d for d in tmp.iterdir()] == []


def test_artifacts_list_json_rm(cli, workdir):
    assert cli("artifacts").stdout.startswith("no artifacts")
    for fmt in ("torchscript", "checkpoint"):
        assert cli("export", "-m", "densenet-tiny", "-f", fmt, "--image-size", TINY_SIZE
                   ).exit_code == 0
    rows = json.loads(cli("artifacts", "--json").stdout)
    assert {r["format"] for r in rows} == {"torchscript", "checkpoint"}
    assert all(r["model"] == "densenet-tiny" and r["size_mb"] > 0 and r["last_used"] for r in rows)
    table = cli("artifacts").stdout
    assert "torchscript" in table and "checkpoint" in table
    r = cli("artifacts", "rm", rows[0]["key"])
    assert r.exit_code == 0 and len(json.loads(cli("artifacts", "--json").stdout)) == 1
    r = cli("artifacts", "rm", "ffffffff")
    assert r.exit_code == 1 and "no artifact" in r.stderr
    loaded = load_model("densenet-tiny")
    x = fixed_input(2, int(TINY_SIZE))
    kept_reference(ArtifactCache().references, loaded, x, lambda: loaded.module(x))
    assert len(list(ArtifactCache().references.glob("*.pt"))) == 1
    r = cli("artifacts", "rm", "--all")
    assert r.exit_code == 0 and "removed 1 kept reference logits" in r.stdout
    assert json.loads(cli("artifacts", "--json").stdout) == []
    assert list(ArtifactCache().references.glob("*.pt")) == []
    assert cli("artifacts", "rm", "--all").stdout.strip() == "nothing to remove"


@pytest.mark.parametrize("args,needle", [
    (["-m", "densnet121"], "did you mean densenet121"),
    (["-m", "densenet-tiny", "-f", "tflite"], "unknown format 'tflite'"),
    (["-m", "densenet-tiny", "-f", "torchscript", "--precision", "int8"],
     "does not support precision 'int8'"),
    (["-m", "densenet-tiny", "--precision", "fp64"], "does not support precision"),
    (["-m", "densenet-tiny", "--weights", "/nonexistent/w.pt"], "does not exist"),
    (["-m", "densenet-tiny", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["-m", "densenet-tiny", "--batch-size", "-3"], "--batch-size must be at least 1"),
    (["-m", "densenet-tiny", "--image-size", "8"], "too small for densenet-tiny"),
    (["-m", "densenet-tiny", "--opset", "9"], "--opset 9 is not supported"),
    (["-m", "densenet-tiny", "--batch-size", "abc"], "valid integer"),
])
def test_export_bad_input(cli, workdir, args, needle):
    r = cli("export", *args)
    assert r.exit_code != 0
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ArtifactCache().entries() == []


def test_bad_input_loses_nothing_cached(cli, workdir):
    assert cli("export", "-m", "densenet-tiny", "-f", "checkpoint", "--image-size", TINY_SIZE
               ).exit_code == 0
    before = ArtifactCache().entries()[0]
    assert cli("export", "-m", "densenet-tiny", "--weights", "missing.pt").exit_code != 0
    after = ArtifactCache().entries()
    assert [a.path for a in after] == [before.path]
    after[0].verify()


def test_unwritable_cache_directory(cli, workdir, monkeypatch):
    blocker = workdir / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("DENSEBENCH_ARTIFACTS", str(blocker / "cache"))
    r = cli("export", "-m", "densenet-tiny", "-f", "checkpoint", "--image-size", TINY_SIZE)
    assert r.exit_code == 1
    assert "is not writable" in r.stderr and "DENSEBENCH_ARTIFACTS" in r.stderr


def test_config_validation_in_dataclass():
    with pytest.raises(ConfigError):
        ExportSpec("densenet-tiny", "torchscript", opset=18)


def test_random_weights_labelled_in_cli_and_manifest(cli, workdir):
    r = cli("export", "-m", "densenet-tiny", "-f", "checkpoint", "--image-size", TINY_SIZE)
    assert "random weights (seed 0)" in r.stdout
    m = ArtifactCache().entries()[0].manifest
    assert m["weights_info"]["random"] is True


@pytest.mark.slow
def test_densenet121_onnx_at_224(workdir):
    art, _ = export_artifact(ExportSpec("densenet121", "onnx"))
    assert art.fields["input_shape"] == ["batch", 3, 224, 224]
    assert art.manifest["parity"]["max_abs_error"] < 1e-4
    x = fixed_input(1, 224, seed=5)
    ref = load_model("densenet121").module(x)
    assert torch.allclose(load_artifact(art)(x), ref, atol=1e-4)
