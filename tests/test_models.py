from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from densebench.errors import ConfigError, ModelError, WeightsError
from densebench.models import (
    WeightsSpec,
    check_image_size,
    get_entry,
    list_models,
    load_model,
    model_stats,
)


def test_registry_has_densenets_and_torchvision_names():
    names = list_models()
    for n in ("densenet121", "densenet161", "densenet169", "densenet201", "densenet-tiny"):
        assert n in names
    assert "resnet18" in list_models("resnet*", include_torchvision=True)
    assert get_entry("resnet18").has_imagenet_weights
    assert not get_entry("densenet-tiny").has_imagenet_weights


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match="did you mean densenet121"):
        get_entry("densnet121")


def test_densenet_tiny_is_a_real_torchvision_densenet():
    from torchvision.models import DenseNet

    m = load_model("densenet-tiny").module
    assert isinstance(m, DenseNet)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_random_weights_are_deterministic_per_seed():
    a = load_model("densenet-tiny", "random:7").module.state_dict()
    b = load_model("densenet-tiny", "random:7").module.state_dict()
    c = load_model("densenet-tiny", "random:8").module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    lm = load_model("densenet-tiny", "random:7")
    assert lm.random_weights and lm.weights_id == "random:7"


def test_random_weights_do_not_disturb_global_rng():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    load_model("densenet-tiny", "random:1")
    assert torch.equal(torch.rand(3), expected)


def test_num_classes_replaces_head():
    lm = load_model("densenet-tiny", "random:0", num_classes=10)
    assert lm.module(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert lm.num_classes == 10


def test_weights_from_state_dict_and_checkpoint(tmp_path):
    src = load_model("densenet-tiny", "random:5", num_classes=10).module
    sd_path = tmp_path / "sd.pt"
    torch.save(src.state_dict(), sd_path)
    ck_path = tmp_path / "ck.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               ck_path)
    x = torch.randn(2, 3, 32, 32)
    for p in (sd_path, ck_path):
        lm = load_model("densenet-tiny", str(p), num_classes=10)
        assert torch.equal(lm.module(x), src(x))
        assert lm.weights_id.startswith("file:") and not lm.random_weights
    # the same file gives the same identity; another file another
    assert load_model("densenet-tiny", str(sd_path), 10).weights_id != \
        load_model("densenet-tiny", str(ck_path), 10).weights_id


def test_weights_file_with_other_head_asks_for_num_classes(tmp_path):
    src = load_model("densenet-tiny", "random:5", num_classes=10).module
    p = tmp_path / "sd.pt"
    torch.save(src.state_dict(), p)
    with pytest.raises(WeightsError, match="--num-classes 10"):
        load_model("densenet-tiny", str(p))


def test_bad_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_model("densenet-tiny", str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="could not be loaded"):
        load_model("densenet-tiny", str(junk))
    other = tmp_path / "other.pt"
    torch.save(load_model("densenet121").module.state_dict(), other)
    with pytest.raises(WeightsError, match="does not fit densenet-tiny"):
        load_model("densenet-tiny", str(other))
    with pytest.raises(ConfigError, match="seed must be an integer"):
        WeightsSpec.parse("random:abc")


def test_imagenet_weights_through_torchvision_cache(tmp_path, monkeypatch):
    """torchvision's own loader reads its cache; we put a file where it looks."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    w = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / w.url.rsplit("/", 1)[-1]
    ckpt.parent.mkdir(parents=True)
    src = torchvision.models.squeezenet1_1()
    torch.save(src.state_dict(), ckpt)
    lm = load_model("squeezenet1_1", "imagenet")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(lm.module(x), src.eval()(x))
    assert lm.weights_id == f"imagenet:{w}" and not lm.random_weights
    head = load_model("squeezenet1_1", "imagenet", num_classes=10)
    assert head.head_replaced and head.random_weights
    assert "random classifier head" in head.describe_weights()


def test_imagenet_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # nothing listens: fails at once
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(WeightsError) as e:
        load_model("densenet-tiny", "imagenet")
    assert "no ImageNet weights" in str(e.value)
    with pytest.raises(WeightsError) as e:
        load_model("squeezenet1_1", "imagenet")
    msg = str(e.value)
    assert "random" in msg and "PATH" in msg and "no fallback" in msg and "\n" not in msg


def test_image_size_check():
    check_image_size("densenet-tiny", 32)
    with pytest.raises(ModelError, match=r"use --image-size \d+ or more"):
        check_image_size("densenet-tiny", 8)
    with pytest.raises(ConfigError):
        check_image_size("densenet-tiny", 0)


def test_model_stats_densenet121():
    st = model_stats("densenet121", 224)
    assert abs(st.params - 7_978_856) == 0
    assert st.gmacs == pytest.approx(2.87, rel=0.02)


def test_models_lists_the_registry_with_published_sizes(cli):
    rows = {r["name"]: r for r in json.loads(cli("models", "--json").stdout)}
    d121 = rows["densenet121"]  # torchvision's published figures: 7,978,856 params, 2.83 GFLOPS
    assert d121["params_m"] == pytest.approx(7.98, abs=0.01)
    assert d121["gmacs_224"] == pytest.approx(2.87, rel=0.02)
    assert d121["default_image_size"] == 224 and d121["imagenet_weights"] is True
    assert rows["densenet-tiny"]["imagenet_weights"] is False
    names = [r["name"] for r in json.loads(cli("models", "densenet1*", "--json").stdout)]
    assert sorted(names) == ["densenet121", "densenet161", "densenet169"]
    table = cli("models").stdout
    assert "densenet121" in table and "densebench models --all" in table


def test_env_describes_this_machine(cli):
    fp = json.loads(cli("env", "--json").stdout)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(ln.split(":", 1) for ln in cpuinfo.splitlines() if ":" in ln)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "model name" in fields:  # Linux on x86: what /proc/cpuinfo says
        assert fp["cpu"]["model"] == fields["model name"]
        assert fp["cpu"]["family"] == int(fields["cpu family"])
        assert fp["cpu"]["model_number"] == int(fields["model"])
        assert set(fp["cpu"]["flags"]) <= set(fields["flags"].split())
    assert fp["libraries"]["torch"] == torch.__version__
    assert fp["settings"]["torch_threads"] == torch.get_num_threads()
    assert fp["cpu"]["affinity_cores"] == len(os.sched_getaffinity(0))
    shown = cli("env").stdout
    assert fp["cpu"]["model"] in shown and torch.__version__ in shown
