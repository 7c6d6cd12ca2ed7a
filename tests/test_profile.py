from __future__ import annotations

import json
import os
import signal

import pytest

import densebench.devices
from densebench.backends.onnxruntime import table_from_ort
from densebench.models import load_model
from densebench.results.store import RunStore
from densebench.scenarios.profile import count_flops, cpu_peak_gflops

from .conftest import TINY_SIZE, blocked_at, run_cli_process, wait_for

BASE = ["profile", "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-b", "2", "--iters", "3",
        "--warmup", "1", "--device", "cpu"]


def test_pytorch_profile_table_trace_and_tensorboard(cli, workdir):
    r = cli(*BASE, "-v", "eager", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    names = [row["name"] for row in res["top"]]
    top10 = " ".join(names[:10])
    assert "convolution" in top10 and "batch_norm" in top10 and "aten::cat" in " ".join(names)
    full = __import__("pandas").read_csv(workdir / "runs" / res["run"] / res["path"] /
                                         "operators.csv")
    assert full["share"].sum() == pytest.approx(1.0, abs=0.01)
    assert (full["self_cpu_us"] >= 0).all() and len(full) == res["operators"]
    run_dir = workdir / "runs" / res["run"]
    trace = json.loads((run_dir / res["path"] / "trace.json").read_text())
    assert trace["traceEvents"]
    tb = list((run_dir / res["files"]["tensorboard"]).glob("*.pt.trace.json"))
    assert len(tb) == 1 and json.loads(tb[0].read_text())["traceEvents"]
    b = res["breakdown"]
    # timed apart, so on a loaded host either can be the longer: only that both were timed
    assert b["compute_ms"] > 0 and b["e2e_ms"] > 0
    assert 0 < b["cpu_busy_fraction"] <= 1.5  # CPU time over (threads x wall), with slack
    assert res["flops_per_iter"] == count_flops(load_model("densenet-tiny").module, 2, TINY_SIZE)
    assert res["achieved_gflops"] > 0
    assert res["peak"]["gflops"] > 0 and 0 < res["peak_share"] < 2
    assert res["memory"]["peak_rss_mb"] > 0
    shown = cli("show", res["run"])
    assert shown.exit_code == 0 and "profile: eager" in shown.stdout


def test_onnxruntime_profile_is_parsed(cli, workdir):
    r = cli(*BASE, "-v", "onnxruntime", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    ops = {row["name"]: row for row in res["top"]}
    assert "Conv" in ops or "FusedConv" in ops
    run_dir = workdir / "runs" / res["run"] / res["path"]
    table = __import__("pandas").read_csv(run_dir / "operators.csv")
    assert table["share"].sum() == pytest.approx(1.0, abs=0.01)
    trace = json.loads((run_dir / "ort_trace.json").read_text())
    assert isinstance(trace, list) and any(e.get("cat") == "Node" for e in trace)
    nodes = __import__("pandas").read_csv(run_dir / "nodes.csv")
    assert len(nodes) > 10 and set(nodes["provider"]) == {"CPUExecutionProvider"}
    assert nodes["share"].sum() == pytest.approx(1.0, abs=0.01)


def test_ort_table_parser_on_hand_made_trace():
    trace = [
        {"cat": "Session", "name": "model_run", "dur": 1000},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 300,
         "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 100,
         "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "cat_kernel_time", "dur": 100,
         "args": {"op_name": "Concat", "provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "conv1_fence_before", "dur": 5, "args": {}},
    ]
    ops, nodes, placement = table_from_ort(trace)
    assert [(o["name"], o["calls"], o["self_cpu_us"]) for o in ops] == [
        ("Conv", 2, 400.0), ("Concat", 1, 100.0)]
    assert ops[0]["share"] == pytest.approx(0.8)
    assert nodes[0]["name"] == "conv1" and nodes[0]["us"] == 400.0
    assert {"node": "cat", "op_type": "Concat", "provider": "CPUExecutionProvider"} in placement


@pytest.mark.slow
def test_flops_counted_by_hand():
    """A convolution and a linear layer, counted by hand: 2 FLOPs per multiply-add."""
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 10))
    conv = 2 * 8 * 8 * 8 * (3 * 3 * 3)  # per image: outputs (8 channels x 8 x 8) x 27 MACs
    linear = 2 * (8 * 8 * 8) * 10
    assert count_flops(net, 2, 8) == 2 * (conv + linear)


def test_densenet121_flops_at_224():
    flops = count_flops(load_model("densenet121").module, 1, 224)
    assert flops == pytest.approx(2 * 2.87e9, rel=0.02)


def test_cpu_peak_estimate_scales_with_precision():
    fp32 = cpu_peak_gflops("fp32", 2)
    assert fp32["gflops"] > 0 and fp32["cores"] == 2
    assert cpu_peak_gflops("int8", 2)["gflops"] >= fp32["gflops"]


@pytest.mark.parametrize("args,needle", [
    (["-v", "nope"], "unknown variant"),
    (["-v", "amp-fp16"], "needs a CUDA GPU"),
    (["-v", "eager", "--iters", "0"], "--iters must be at least 1"),
    (["-v", "eager", "-b", "0"], "--batch-size must be at least 1"),
    (["-v", "eager", "--device", "cuda"], "has none visible"),
])
def test_profile_bad_input(cli, workdir, args, needle):
    if needle == "has none visible" and densebench.devices.cuda_available():
        pytest.skip("this host has a GPU: --device cuda is not bad input here")
    r = cli("profile", "--device", "cpu", "-m", "densenet-tiny", *args)
    assert r.exit_code != 0 and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_profile_runs_in_its_own_worker_and_a_crash_is_one_line(cli, workdir, monkeypatch):
    """The profile goes through the one pipeline: a worker process of its own, so a
    runtime that kills its process fails the profile with one line (exit 1) instead of
    taking densebench down, and the run is stored as failed with the reason."""
    r = cli("profile", "-m", "pool-tiny", "-v", "eager", "-b", "2", "--iters", "2",
            "--warmup", "1", "--device", "cpu", "--name", "prof", "--json")
    assert r.exit_code == 0, r.stderr
    rec = RunStore().load("prof")
    (cell,) = rec.cells
    assert rec.data["kind"] == "profile" and cell.scenario == "profile"
    assert cell.worker["pid"] != os.getpid()  # measured in a worker process
    assert rec.data["profiles"][0]["path"] == "profiles/eager"
    assert (rec.path / "profiles" / "eager" / "operators.csv").stat().st_size > 0
    monkeypatch.setenv("SLEEPY_CRASH", "sleep")
    r = cli("profile", "-m", "pool-tiny", "-v", "sleep", "--device", "cpu", "--name", "gone")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("densebench: error:")]
    assert r.exit_code == 1 and len(errors) == 1, r.stderr  # beside the progress lines
    assert "cannot profile sleep" in errors[0] and "139" in errors[0]
    rec = RunStore().load("gone")
    assert rec.status == "failed" and "139" in rec.data["error"]


def test_ctrl_c_during_a_profile_marks_it_incomplete(workdir, tmp_path):
    env, ready = blocked_at("sleep", "prepare", tmp_path)
    p = run_cli_process("profile", "-m", "pool-tiny", "-v", "sleep", "--device", "cpu",
                        "--name", "cut", env=env)
    wait_for(ready, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "incomplete" in err, err
    assert RunStore().load("cut").status == "incomplete"
