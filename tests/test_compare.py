from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest

from densebench.compare import compare_runs
from densebench.environment import fingerprint
from densebench.errors import ConfigError, StoreError
from densebench.measure.stats import summarize
from densebench.results.schema import Cell
from densebench.results.store import RunStore

from .conftest import TINY_SIZE


def _fixture_run(name, cells, env=None, threads=2):
    """A stored run whose raw samples are known: the thing compared is real data on disk."""
    store = RunStore()
    rec = store.create("benchmark", name, {"fixture": True}, env or fingerprint(),
                       extra={"model": {"name": "densenet121", "image_size": 224},
                              "device": "cpu", "threads": threads})
    for variant, bs, samples in cells:
        rec.add_cell(Cell(model="densenet121", variant=variant, batch_size=bs, mode="model",
                          device="cpu", samples_ms=list(samples),
                          stats=summarize(samples, bs), precision="fp32"))
    rec.finish("complete")
    return rec


def _noise(mean, n, seed, sd=0.02):
    return np.random.default_rng(seed).normal(mean, mean * sd, size=n).tolist()


@pytest.fixture
def fixture_runs(workdir):
    base = _fixture_run("base", [("eager", 1, _noise(10, 200, 1)), ("onnxruntime", 1,
                                                                      _noise(5, 200, 2))])
    slow = _fixture_run("slow", [("eager", 1, _noise(20, 200, 3)),   # 2x slower
                                 ("onnxruntime", 1, _noise(5, 200, 4)),  # noise only
                                 ("compile", 1, _noise(4, 200, 5))])  # not in baseline
    return base, slow


def test_two_x_slowdown_is_flagged_and_noise_is_not(fixture_runs):
    base, slow = fixture_runs
    comp = compare_runs([base, slow])
    by = {c.variant: c for c in comp.cells}
    assert by["eager"].verdict == "slower"
    assert by["eager"].ratio == pytest.approx(2.0, rel=0.02)
    assert by["eager"].ci[0] > 1.9 and by["eager"].ci[1] < 2.1
    assert by["onnxruntime"].verdict == "no significant change"
    assert by["onnxruntime"].ci[0] < 1.0 + 0.05
    assert [u["variant"] for u in comp.unmatched] == ["compile"]
    expected = np.sqrt(by["eager"].ratio * by["onnxruntime"].ratio)
    assert comp.geomean[slow.id] == pytest.approx(expected)
    thr = compare_runs([base, slow], metric="throughput")
    assert {c.variant: c.verdict for c in thr.cells}["eager"] == "slower"
    assert {c.variant: c.ratio for c in thr.cells}["eager"] == pytest.approx(0.5, rel=0.02)


def test_improvement_is_faster(fixture_runs):
    base, slow = fixture_runs
    comp = compare_runs([slow, base])
    assert {c.variant: c.verdict for c in comp.cells}["eager"] == "faster"


def test_small_real_change_below_threshold_is_not_called(workdir):
    a = _fixture_run("a", [("eager", 1, _noise(10.0, 500, 1, sd=0.005))])
    b = _fixture_run("b", [("eager", 1, _noise(10.2, 500, 2, sd=0.005))])  # +2%, significant
    comp = compare_runs([a, b], threshold=0.05)
    assert comp.cells[0].ci[0] > 1.0  # statistically real...
    assert comp.cells[0].verdict == "no significant change"  # ...but below 5%
    assert compare_runs([a, b], threshold=0.01).cells[0].verdict == "slower"


def test_cli_formats_and_exit_codes(cli, fixture_runs):
    base, slow = fixture_runs
    r = cli("compare", "base", "slow")
    assert r.exit_code == 0 and "slower" in r.stdout and "unmatched: compile" in r.stdout
    r = cli("compare", "base", "slow", "--fail-on-regression")
    assert r.exit_code == 1 and "regression" in r.stderr
    assert cli("compare", "base", "base", "--fail-on-regression").exit_code == 0
    j = json.loads(cli("compare", "base", "slow", "--format", "json").stdout)
    assert {row["variant"]: row["verdict"] for row in j["rows"]}["eager"] == "slower"
    rows = list(csv.DictReader(io.StringIO(cli("compare", "base", "slow", "--format",
                                               "csv").stdout)))
    assert {r_["variant"] for r_ in rows} == {"eager", "onnxruntime"}
    assert float(next(r_ for r_ in rows if r_["variant"] == "eager")["ratio"]) > 1.9
    md = cli("compare", "base", "slow", "--format", "markdown").stdout
    assert "| run | variant |" in md and "slower" in md


def test_self_comparison_of_a_real_run_shows_no_change(cli, workdir):
    r = cli("run", "--device", "cpu",
            "-m", "densenet-tiny", "--image-size", TINY_SIZE, "-v", "eager,onnxruntime",
            "-b", "1,2", "--iters", "20", "--warmup", "1", "--no-isolate", "--name", "real",
            "--repeats", "1")
    assert r.exit_code == 0, r.stderr
    j = json.loads(cli("compare", "real", "real", "--format", "json").stdout)
    assert len(j["rows"]) == 8
    assert all(row["verdict"] == "no significant change" for row in j["rows"])
    assert all(row["ratio"] == pytest.approx(1.0) for row in j["rows"])
    warnings = j["environment_warnings"]  # one process each (and, maybe, a busy host)
    assert any("measured each cell in one worker process" in w for w in warnings)
    assert not [w for w in warnings if "differs" in w]  # the same environment


def test_environment_differences_are_warned(cli, workdir):
    env_b = fingerprint()
    env_b["libraries"]["torch"] = "9.9.9"
    env_b["settings"]["tf32_matmul"] = not env_b["settings"]["tf32_matmul"]
    _fixture_run("a", [("eager", 1, _noise(10, 50, 1))])
    _fixture_run("b", [("eager", 1, _noise(10, 50, 2))], env=env_b, threads=1)
    r = cli("compare", "a", "b")
    assert r.exit_code == 0
    assert "torch differs" in r.stderr and "tf32_matmul differs" in r.stderr
    assert "threads differs" in r.stderr


def test_compare_errors(cli, fixture_runs, workdir):
    base, _ = fixture_runs
    r = cli("compare", "base", "nope")
    assert r.exit_code == 1 and "no run 'nope'" in r.stderr
    other = _fixture_run("other", [("aoti", 64, _noise(3, 30, 9))])
    r = cli("compare", "base", "other")
    assert r.exit_code == 1 and "no cell in common" in r.stderr
    data = json.loads((other.path / "run.json").read_text())
    data["schema_version"] = 7
    (other.path / "run.json").write_text(json.dumps(data))
    r = cli("compare", "base", other.path)
    assert r.exit_code == 1 and "schema version 7" in r.stderr
    r = cli("compare", "base", "other")  # by name: says why it cannot be found
    assert r.exit_code == 1 and "schema version 7" in r.stderr
    assert "unknown metric" in cli("compare", "base", "base", "--metric", "p42").stderr
    assert cli("compare", "base").exit_code != 0
    with pytest.raises(ConfigError):
        compare_runs([base, base], threshold=2)
    with pytest.raises(StoreError):
        compare_runs([base, other])


def test_report_writes_png_and_html(cli, fixture_runs, workdir):
    base, slow = fixture_runs
    r = cli("report", "base", "slow", "--out", workdir / "rep")
    assert r.exit_code == 0, r.stderr
    for name in ("throughput.png", "latency_distribution.png", "batch_scaling.png",
                 "parity.png"):
        data = (workdir / "rep" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    page = (workdir / "rep" / "index.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for name in ("throughput.png", "parity.png", "eager", "onnxruntime"):
        assert name in page
    assert _unbalanced_tags(page) == []
    imgs = re.findall(r"<img[^>]*src=['\"]([^'\"]+)['\"]", page)
    assert imgs and all((workdir / "rep" / src).is_file() for src in imgs)  # no broken image
    assert cli("report", "nope", "--out", workdir / "x").exit_code == 1


def _unbalanced_tags(page: str) -> list[str]:
    """What is wrong with the nesting of ``page``'s elements: a tag closed that is not the
    innermost open one, or left open at the end (void elements excepted)."""
    from html.parser import HTMLParser

    void = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}
    wrong: list[str] = []
    stack: list[str] = []

    class Nesting(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag not in void:
                stack.append(tag)

        def handle_endtag(self, tag):
            if not stack or stack[-1] != tag:
                wrong.append(f"</{tag}> closes {stack[-1] if stack else 'nothing'}")
            else:
                stack.pop()

    Nesting().feed(page)
    return wrong + [f"<{t}> never closed" for t in stack]


def test_cli_threshold_and_the_p99_metric(cli, workdir):
    """`--threshold` moves the line below which no change is called, `--metric p99` judges
    the tail: a run whose median is unchanged and whose slowest 2% doubled is slower on p99
    only."""
    rng = np.random.default_rng(7)
    body = rng.normal(10.0, 0.05, 980).tolist()
    a = _fixture_run("a", [("eager", 1, body + rng.normal(12.0, 0.05, 20).tolist())])
    b = _fixture_run("b", [("eager", 1, body + rng.normal(24.0, 0.05, 20).tolist())])
    c = _fixture_run("c", [("eager", 1, _noise(10.3, 1000, 3, sd=0.005))])  # +3% median
    del a, b, c

    def verdict(*args):
        r = cli("compare", *args, "--format", "json")
        assert r.exit_code == 0, r.stderr
        (row,) = json.loads(r.stdout)["rows"]
        return row["verdict"], row["ratio"]

    assert verdict("a", "b")[0] == "no significant change"  # p50: the same body
    v, ratio = verdict("a", "b", "--metric", "p99")
    assert v == "slower" and ratio == pytest.approx(2.0, rel=0.05)
    assert verdict("a", "c")[0] == "no significant change"  # 3% is under the default 5%
    assert verdict("a", "c", "--threshold", "0.01")[0] == "slower"
    r = cli("compare", "a", "b", "--metric", "p99", "--fail-on-regression")
    assert r.exit_code == 1 and "1 regression(s) beyond 5% on p99" in r.stderr
