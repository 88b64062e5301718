"""Local weights: file formats, nested checkpoints, strict loading, one error for a missing file."""

import pytest
import torch
from safetensors.torch import save_file

from mmdisco.metrics.weights import (
    NETWORKS,
    MissingWeightsError,
    load_into,
    load_state_dict,
    weights_path,
)


def test_formats_and_nesting(tmp_path):
    state = {"w": torch.arange(3.0)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"model": state, "epoch": 3}, tmp_path / "panns.pth")
    torch.save({"state_dict": state}, tmp_path / "lightning.ckpt")
    save_file(state, tmp_path / "ours.safetensors")
    for name in ["zip.pt", "legacy.pt", "panns.pth", "lightning.ckpt", "ours.safetensors"]:
        assert torch.equal(load_state_dict(tmp_path / name)["w"], state["w"]), name
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")


def test_weights_only_refuses_pickled_code(tmp_path):
    torch.save({"w": torch.nn.Linear(1, 1)}, tmp_path / "module.pt")  # a pickled module
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_state_dict(tmp_path / "module.pt")


def test_strict_loading_allows_only_missing_batch_norm_counters():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    state = {k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    load_into(net, state, "old checkpoint")
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        load_into(net, {k: v for k, v in state.items() if k != "0.bias"}, "broken")
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        load_into(net, {**state, "extra": torch.zeros(1)}, "broken")


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_missing_file_is_one_error_naming_file_and_source(name, tmp_path):
    net = NETWORKS[name]
    with pytest.raises(MissingWeightsError) as err:
        weights_path(name, tmp_path)
    msg = str(err.value)
    assert net.filename in msg and str(tmp_path) in msg and net.source in msg
    assert "Nothing is downloaded" in msg and "\n" not in msg
    (tmp_path / net.filename).write_bytes(b"")
    assert weights_path(name, tmp_path) == tmp_path / net.filename
    assert weights_path(name, None, tmp_path / net.filename) == tmp_path / net.filename
    with pytest.raises(KeyError, match="unknown feature network"):
        weights_path("inception", tmp_path)
