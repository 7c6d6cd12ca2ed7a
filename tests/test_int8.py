"""The CPU's fast paths: OpenVINO (f32 set and read back, NNCF int8), ONNX Runtime int8,
and the one calibration source they and torchao's PT2E int8 share (compile-int8 runs in
test_run.py's --variant all, which compiles it once)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from densebench.artifacts import ArtifactCache
from densebench.exporters import ExportSpec, export_artifact
from densebench.parity import THRESHOLDS as PARITY_THRESHOLDS
from densebench.parity import within as parity_within

from .conftest import TINY_SIZE

pytest.importorskip("openvino")


def _images(root: Path, n: int) -> Path:
    """A real image folder (two classes) written by the test."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _cells(out: str) -> dict:
    return {(c["variant"], c["batch_size"]): c for c in json.loads(out)["cells"]}


@pytest.mark.slow
def test_openvino_variants_run_within_their_parity_and_reuse_their_artifacts(cli, workdir):
    args = ("run", "--device", "cpu", "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v",
            "openvino,openvino-int8", "-b", "2", "--mode", "model",
            "--min-iters", "3", "--min-time", "0.1", "--warmup", "1", "--repeats", "1",
            "--json")
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    cells = _cells(r.stdout)
    for (variant, _), c in cells.items():
        assert c["status"] == "ok", c
        precision = "int8" if variant.endswith("int8") else "fp32"
        assert c["parity_within"] is True, (variant, c["parity_max_abs_error"])
        assert c["precision"] == precision
    from densebench.results.store import RunStore

    first = RunStore().list()[-1]
    info = first.data["variants"]
    # the f32 variant really ran f32: the precision read back from the compiled model
    assert info["openvino"]["options"]["inference_precision"] == "f32"
    assert info["openvino"]["cold_start"]["artifact_cached"] is False
    r = cli(*args)  # a second run loads the IR files from the cache
    assert r.exit_code == 0, r.stderr
    again = RunStore().list()[-1].data["variants"]
    assert all(again[v]["cold_start"]["artifact_cached"] for v in ("openvino", "openvino-int8"))
    assert again["openvino"]["artifact"] == info["openvino"]["artifact"]
    entries = [p.name for p in (workdir / "artifacts").iterdir()]
    assert any("openvino-fp32" in e for e in entries) and any("openvino-int8" in e
                                                                 for e in entries)
    manifest = json.loads(next((workdir / "artifacts").glob("*openvino-int8*/manifest.json"))
                          .read_text())
    assert manifest["fields"]["calibration"]["source"] == "synthetic"
    assert {"model.xml", "model.bin"} <= set(manifest["files"])


def test_the_calibration_source_is_part_of_the_artifact_key(workdir):
    folder = _images(workdir / "calib", 8)
    cache = ArtifactCache(workdir / "artifacts")
    keys = {}
    for calib in ("synthetic", f"imagefolder:{folder}"):
        for fmt in ("onnx", "openvino"):
            art, _ = export_artifact(ExportSpec("densenet-tiny", fmt, "int8",
                                                image_size=TINY_SIZE, calib=calib,
                                                calib_batches=2), cache)
            keys[(calib.split(":")[0], fmt)] = art
    assert keys[("synthetic", "onnx")].key != keys[("imagefolder", "onnx")].key
    assert keys[("synthetic", "openvino")].key != keys[("imagefolder", "openvino")].key
    ident = keys[("imagefolder", "openvino")].fields["calibration"]
    assert ident["source"] == "imagefolder" and ident["images"] == 8
    assert ident["path"] == str(folder.resolve()) and ident["files_sha256"]
    # the BatchNorms quant_pre_process folds, and the ones that stay fp32, are recorded
    bn = keys[("synthetic", "onnx")].manifest["batchnorm_nodes"]
    assert bn["after_pre_process"] < bn["in_the_model"]


def test_parity_thresholds_by_precision():
    assert PARITY_THRESHOLDS["int8"] > PARITY_THRESHOLDS["bf16"] > PARITY_THRESHOLDS["fp32"]
    p = {"max_abs_error": 0.05, "max_abs_reference": 1.0}
    assert parity_within("int8", p) is True and parity_within("fp32", p) is False
    assert parity_within("fp32", None) is None


@pytest.mark.parametrize("extra,needle", [
    (["--calib", "imagefolder:/nonexistent/calib"], "--calib: imagefolder /nonexistent/calib "
                                                    "does not exist"),
    (["--calib", "cifar:x"], "--calib 'cifar:x': use synthetic or imagefolder:PATH"),
])
def test_bad_calibration_is_one_line_and_leaves_the_cache_alone(cli, workdir, extra, needle):
    r = cli("run", "--device", "cpu",
            "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "openvino-int8",
            "-b", "2", *extra)
    assert r.exit_code == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (workdir / "artifacts").exists() and not (workdir / "runs").exists()


def test_a_calibration_set_smaller_than_the_batch_is_refused(cli, workdir):
    folder = _images(workdir / "few", 3)
    r = cli("run", "--device", "cpu",
            "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "compile-int8",
            "-b", "4", "--calib", f"imagefolder:{folder}")
    assert r.exit_code == 2, r.stderr
    assert "has 3 images, fewer than the batch of 4" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (workdir / "artifacts").exists()


def test_openvino_without_openvino_and_on_a_gpu_say_why(workdir):
    from densebench.backends import get_backend
    from densebench.variants import get_variant

    why = get_backend("openvino").supported(get_variant("openvino"), "cuda")
    assert "runs on the CPU" in why
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from densebench.cli import main\n"
            "sys.argv = ['densebench', 'run', '-m', 'densenet-tiny', '-v', 'openvino', "
            "'--device', 'cpu']\nmain()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0 and "pip install openvino" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow
def test_aoti_int8_is_compiled_once_into_the_cache_and_loaded_from_it(cli, workdir):
    """The compile-int8 model (torchao PT2E) as an AOTInductor package: the first run
    quantizes and compiles it into the cache, the second loads it (no quantizing, no
    compiling), and both agree with fp32 within int8's threshold."""
    args = ("run", "--device", "cpu",
            "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "aoti-int8",
            "-b", "1,2", "--mode", "model", "--min-iters", "3", "--min-time", "0.1",
            "--warmup", "1", "--repeats", "1", "--json")
    from densebench.results.store import RunStore

    loads = []
    for _ in range(2):
        r = cli(*args)
        assert r.exit_code == 0, r.stderr
        cells = _cells(r.stdout)
        assert set(cells) == {("aoti-int8", 1), ("aoti-int8", 2)}  # one package, any batch
        for c in cells.values():
            assert c["status"] == "ok" and c["precision"] == "int8", c
            assert c["parity_within"] is True, c["parity_max_abs_error"]
        loads.append(RunStore().list()[-1].data["variants"]["aoti-int8"]["cold_start"])
    assert loads[0]["artifact_cached"] is False and loads[0]["export_s"] > 0
    assert loads[1]["artifact_cached"] is True and loads[1]["export_s"] == 0.0
    (entry,) = (workdir / "artifacts").glob("*aoti-int8*")
    fields = json.loads((entry / "manifest.json").read_text())["fields"]
    assert fields["calibration"]["source"] == "synthetic" and "torchao" in fields["versions"]
    assert fields["dynamic_axes"] == ["batch"] and fields["device"] == "cpu"


def test_openvino_serves_instances_as_streams_of_one_throughput_model(cli, workdir):
    """--instances 2 with OpenVINO in the offline scenario: one model compiled with the
    throughput hint and 2 streams (read back from OpenVINO), one request per instance,
    recorded with the cell; the single-stream result keeps the latency hint."""
    import os

    base = ("run", "--device", "cpu",
            "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "openvino",
            "--samples", "32", "--duration", "1s", "--max-batch", "2", "--no-isolate",
            "--json")
    r = cli(*base, "--scenario", "offline", "--instances", "2", "--threads", "1",
            *(["--oversubscribe"] if (os.cpu_count() or 1) < 2 else []))
    assert r.exit_code == 0, r.stderr
    from densebench.results.store import RunStore

    (c,) = RunStore().load(json.loads(r.stdout)["run"]).cells
    assert c.ok and c.scenario_settings["instances"] == 2, c.error
    served = c.scenario_settings["instance_options"]
    assert served["performance_hint"] == "THROUGHPUT" and served["num_streams"] == 2
    assert served["inference_precision"] == "f32" and served["threads"] == 1
    assert c.stats["throughput"] > 0 and c.loadgen["query_count"] >= 1
    r = cli(*base, "--scenario", "single-stream")
    assert r.exit_code == 0, r.stderr
    rec = RunStore().load(json.loads(r.stdout)["run"])
    assert "instance_options" not in rec.cells[0].scenario_settings
    assert rec.data["variants"]["openvino"]["options"]["performance_hint"] == "LATENCY"
    assert rec.data["variants"]["openvino"]["options"]["num_streams"] == 1


@pytest.mark.slow
def test_skipping_torchaos_qat_folding_leaves_a_ptq_model_unchanged():
    """densebench.quantize skips convert_pt2e's QAT conv-BatchNorm folding (a minute of
    pattern exports on densenet121); on a post-training-quantized DenseNet the converted
    model is the same graph with the same numbers as torchao's full convert."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from densebench.models import load_model
    from densebench.quantize import require_torchao, without_qat_folding

    xiq = require_torchao()[0]
    module = load_model("densenet-tiny").module.eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    out = {}
    for skip in (False, True):
        with torch.no_grad():
            prepared = prepare_pt2e(torch.export.export(module, (batches[0],)).module(),
                                    _quantizer(xiq))
            for x in batches:
                prepared(x)
            import torchao.quantization.pt2e.quantize_pt2e as qp

            original = qp._fold_conv_bn_qat
            with without_qat_folding(skip):
                assert (qp._fold_conv_bn_qat is original) is not skip  # really skipped
                converted = convert_pt2e(prepared)
            assert qp._fold_conv_bn_qat is original  # and put back
            out[skip] = (converted(batches[0]), [n.target for n in converted.graph.nodes])
    # BatchNorms are left (after concatenations), so torchao's full convert did run the
    # QAT folding the skip leaves out
    assert any("batch_norm" in str(n) for n in out[True][1])
    assert out[True][1] == out[False][1]
    assert torch.equal(out[True][0], out[False][0])


def _quantizer(xiq):
    q = xiq.X86InductorQuantizer()
    q.set_global(xiq.get_default_x86_inductor_quantization_config())
    return q
