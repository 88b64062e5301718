"""kill -9 in the middle of writing a file, at every stage, then the same command again: the
result equals an uninterrupted run's (issue 15).

Every run is a fresh process started by tests/fault_child.py with one environment; the fault
``stall:NAME:K`` stops the child at the K-th atomic rename onto NAME with the temporary file
cut to half (the state of a kill mid-write) and the child is then killed with SIGKILL.
Kills between files are covered by tests/test_training.py (training) and tests/test_fakes.py
(fake pre-sampling).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fault_child import ROOT, kill_at_stall, run
from test_fakes import CAPTIONS
from test_fakes import OPTS as FAKE_OPTS
from test_fakes import SAMPLER as FAKE_SAMPLER
from test_training import read_csv, run_args

from mmdisco.io import load_tensors

SHORT = ["train.steps=20", "train.ema_decay=0.9"]  # checkpoints at 10 and 20


def visible_files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` but hidden ones (the temp files of killed writers)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    }


def hidden_temps(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob(".*.tmp"))


# -- synthetic data generation ------------------------------------------------------------------
GENERATE = ["--num-clips", "4", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    run("none", "make_synthetic_data.py", "--out", str(out), *GENERATE)
    return out


@pytest.mark.parametrize("target", ["000002.mp4:1", "metadata.csv:1"])
def test_data_generation_killed_mid_file(generated, tmp_path, target):
    out = tmp_path / "data"
    command = ["make_synthetic_data.py", "--out", str(out), *GENERATE]
    kill_at_stall(tmp_path, f"stall:{target}", *command)
    name = target.split(":")[0]
    assert not (out / name).exists() and hidden_temps(out)  # a half-written temp file only
    run("none", *command)
    assert visible_files(out) == visible_files(generated)  # bit-identical mp4s and CSV


# -- real-latent caching and fake pre-sampling (both sharded caches) ----------------------------
CACHE_CHILD = f"""
import sys, torch
torch.set_num_threads(1)
from tiny_pair_bases import synthetic_bases
from mmdisco.data.paired import SyntheticPairs
from mmdisco.pairs.fakes import presample_fakes
from mmdisco.pairs.real import cache_real_latents
from mmdisco.sampling import JointSampler
bases = synthetic_bases()
if sys.argv[3] == "real":
    data = SyntheticPairs(sys.argv[2], num_clips=4, seed=3, progress=False)
    cache_real_latents(data, bases, sys.argv[1], shard_size=2, batch_size=2, progress=False)
else:
    presample_fakes(bases, {CAPTIONS!r}, cache_dir=sys.argv[1], progress=False,
                    sampler=JointSampler(bases, **{FAKE_SAMPLER!r}), **{FAKE_OPTS!r})
"""


@pytest.fixture(scope="module")
def references(generated, tmp_path_factory):
    """kind -> the cache directory of an uninterrupted run (made once per kind)."""
    made = {}

    def reference(kind: str) -> Path:
        if kind not in made:
            root = tmp_path_factory.mktemp(f"ref-{kind}")
            run("none", "-c", CACHE_CHILD, str(root), str(generated), kind)
            (made[kind],) = root.iterdir()
        return made[kind]

    return reference


@pytest.mark.parametrize(
    "kind, target",
    [
        ("real", "shard-00001.safetensors:1"),
        ("real", "index.json:1"),
        ("fakes", "shard-00002.safetensors:1"),
    ],
)
def test_cache_killed_mid_shard(generated, references, tmp_path, kind, target):
    args = [str(generated), kind]
    ref = references(kind)
    kill_at_stall(tmp_path, f"stall:{target}", "-c", CACHE_CHILD, str(tmp_path / "run"), *args)
    out = tmp_path / "run" / ref.name
    assert not (out / target.split(":")[0]).exists() and hidden_temps(out)
    run("none", "-c", CACHE_CHILD, str(tmp_path / "run"), *args)
    assert visible_files(out) == visible_files(ref)


# -- D training (the toy: fake pre-sampling, checkpoints, final weights) --------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> Path:
    """An uninterrupted 20-step toy run with EMA."""
    run_dir = tmp_path_factory.mktemp("toy")
    run("none", "train.py", *run_args(run_dir, cache), *SHORT)
    return run_dir


@pytest.mark.parametrize(
    "target",
    [
        "shard-00000.safetensors:1",  # the pair store (fresh cache): the real pairs' shard
        "shard-00000.safetensors:2",  # ... then the fake pre-sampling's first shard, mid-file
        "model.safetensors:2",  # mid-write of the second checkpoint
        "checkpoint:2",  # between its two renames: only checkpoint.prev is complete
        "discriminator.safetensors:1",  # writing the final weights
    ],
)
def test_training_killed_mid_file_resumes_bit_identically(trained, cache, tmp_path, target):
    if target.startswith("shard-"):  # the pair store's files: a cache of this test's own
        cache = tmp_path / "cache"
    kill_at_stall(tmp_path, f"stall:{target}", "train.py", *run_args(tmp_path, cache), *SHORT)
    assert not (tmp_path / "discriminator.safetensors").exists()
    if target == "checkpoint:2":  # killed after checkpoint -> checkpoint.prev, before tmp -> it
        assert not (tmp_path / "checkpoint").exists() and (tmp_path / "checkpoint.prev").exists()
    elif target.startswith("shard-"):
        assert any(hidden_temps(d) for d in cache.iterdir())  # a temp, not the shard's name
    else:
        assert hidden_temps(tmp_path)  # the half-written file is a hidden temp, not the name
    run("none", "train.py", *run_args(tmp_path, cache), *SHORT)
    for name in ("discriminator.safetensors", "discriminator_raw.safetensors"):
        a, b = load_tensors(trained / name), load_tensors(tmp_path / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
    rows, ref_rows = read_csv(tmp_path / "train_log.csv"), read_csv(trained / "train_log.csv")
    for r in rows + ref_rows:
        r.pop("pairs_per_s")
    assert rows == ref_rows


def test_two_process_training_killed_mid_checkpoint(cache, tmp_path):
    """2 gloo processes, all killed while rank 0 writes the second checkpoint; rerun with 2
    processes: the weights of an uninterrupted 2-process run, bit for bit."""
    args = [*SHORT, "train.ema_decay=null"]
    run("none", "train.py", *run_args(tmp_path / "ref", cache), *args, procs=2)
    run_dir = tmp_path / "run"
    fault = "stall:model.safetensors:2"
    kill_at_stall(tmp_path, fault, "train.py", *run_args(run_dir, cache), *args, procs=2)
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10 and (run_dir / ".lock").exists()  # its owner is dead
    run("none", "train.py", *run_args(run_dir, cache), *args, procs=2)
    a = load_tensors(tmp_path / "ref" / "discriminator.safetensors")
    b = load_tensors(run_dir / "discriminator.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (run_dir / "checkpoint" / "rng_rank1.safetensors").exists()


# -- sampling and evaluation ---------------------------------------------------------------------
SAMPLE = ["num_samples=64", "batch_size=32", "progress=false", "threads=1", "device=cpu"]


def test_sampling_and_evaluation_killed_mid_file(trained, tmp_path):
    """samples.npz and its metrics: same arrays / same JSON bytes after kill and rerun (the .npz
    zip records its write time, so its bytes differ; its arrays are compared)."""
    run("none", "sample.py", f"run_dir={trained}", *SAMPLE)
    ref = np.load(trained / "samples.npz")
    evaluate = ["evaluate.py", f"run_dir={trained}", "out=ref_metrics.json"]
    run("none", *evaluate)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for f in ("config.yaml", "discriminator.safetensors", "joint_scales.json"):
        (run_dir / f).write_bytes((trained / f).read_bytes())
    kill_at_stall(tmp_path, "stall:samples.npz:1", "sample.py", f"run_dir={run_dir}", *SAMPLE)
    assert not (run_dir / "samples.npz").exists() and hidden_temps(run_dir)
    run("none", "sample.py", f"run_dir={run_dir}", *SAMPLE)
    again = np.load(run_dir / "samples.npz")
    assert ref.files == again.files and all(np.array_equal(ref[k], again[k]) for k in ref.files)
    metrics = ["evaluate.py", f"run_dir={run_dir}", "out=ref_metrics.json"]
    kill_at_stall(tmp_path, "stall:ref_metrics.json:1", *metrics)
    assert not (run_dir / "ref_metrics.json").exists()
    run("none", *metrics)
    expected = (trained / "ref_metrics.json").read_bytes()
    assert (run_dir / "ref_metrics.json").read_bytes() == expected
    assert json.loads(expected)  # a complete JSON object


def test_mp4_sampling_killed_mid_file(tmp_path):
    """The synthetic world's sample.py (unguided: no trained D needed) killed while writing
    its second mp4: the rerun writes the same bytes as an uninterrupted run."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["experiment=synthetic", f"cache_dir={tmp_path}/cache"])
    args = ["guided=false", "num_samples=3", "batch_size=3", "sampler.num_steps=2", *SAMPLE[2:]]
    for name in ("ref", "run"):
        (tmp_path / name).mkdir()
        OmegaConf.save(cfg, tmp_path / name / "config.yaml", resolve=True)
    run("none", "sample.py", f"run_dir={tmp_path / 'ref'}", *args)
    kill_at_stall(tmp_path, "stall:00001.mp4:1", "sample.py", f"run_dir={tmp_path / 'run'}", *args)
    out = tmp_path / "run" / "unguided"
    assert sorted(p.name for p in out.glob("*.mp4")) == ["00000.mp4"] and hidden_temps(out)
    run("none", "sample.py", f"run_dir={tmp_path / 'run'}", *args)
    assert visible_files(out) == visible_files(tmp_path / "ref" / "unguided")
    assert len(visible_files(out)) == 3
