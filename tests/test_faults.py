"""Faults (issue 15): torn / corrupt files, NaN / Inf in training, a second writer, a full or
read-only disk. Script runs go through tests/fault_child.py (a fault injected in a fresh
process); the toy run's sizes are those of tests/test_training.py."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from fault_child import ROOT, run
from test_training import read_csv, run_args

from mmdisco.checkpoint import PREV, load_checkpoint, save_checkpoint
from mmdisco.data.paired import read_metadata
from mmdisco.faults import CorruptFileError, read_csv_rows, repair_cache
from mmdisco.io import atomic_write_json, load_tensors, save_tensors
from mmdisco.runlock import RunLock, RunLockedError

SHORT = ["train.steps=20", "train.ema_decay=null"]  # checkpoints at 10 and 20


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def weights(path):
    return load_tensors(path)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, cache):
    """A finished 20-step toy run (checkpoint at 20, checkpoint.prev at 10)."""
    run_dir = tmp_path_factory.mktemp("toy")
    run("none", "train.py", *run_args(run_dir, cache), *SHORT)
    return run_dir


# -- torn files: a clear error naming the file, or a repair -------------------------------------
def test_truncated_weights_name_the_file_and_the_fix(toy_run, tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(toy_run), str(run_dir)], check=True)
    truncate(run_dir / "discriminator.safetensors")
    proc = run("none", "sample.py", f"run_dir={run_dir}", "num_samples=8", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{run_dir / 'discriminator.safetensors'} is damaged" in last, last
    assert "not a complete safetensors file" in last and "resumes from the checkpoint" in last


def test_torn_checkpoint_falls_back_to_prev_and_resumes_identically(toy_run, cache, tmp_path):
    """checkpoint (step 20) torn, checkpoint.prev (step 10) kept: training resumes from 10 and
    ends with the weights of the uninterrupted run; the torn one is not kept as .prev."""
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(toy_run), str(run_dir)], check=True)
    (run_dir / "discriminator.safetensors").unlink()
    truncate(run_dir / "checkpoint" / "optimizer.safetensors")
    proc = run("none", "train.py", *run_args(run_dir, cache), *SHORT)
    assert "optimizer.safetensors is not a complete safetensors file" in proc.stdout + proc.stderr
    assert "resuming from" in proc.stdout + proc.stderr
    assert same(weights(run_dir / "discriminator.safetensors"),
                weights(toy_run / "discriminator.safetensors"))  # fmt: skip
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    prev = json.loads((run_dir / f"checkpoint{PREV}" / "state.json").read_text())
    assert (state["step"], prev["step"]) == (20, 10)


def test_no_loadable_checkpoint_refuses_to_overwrite(toy_run, tmp_path):
    ckpt = tmp_path / "checkpoint"
    subprocess.run(["cp", "-r", str(toy_run / "checkpoint"), str(ckpt)], check=True)
    (ckpt / "state.json").write_text('{"step": 2')  # torn JSON, no .prev
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    model = torch.nn.Linear(1, 1)
    with pytest.raises(CorruptFileError, match="refuses to overwrite it.*mv .*checkpoint"):
        load_checkpoint(ckpt, model, torch.optim.Adam(model.parameters()))
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_damaged_cache_shard_is_rebuilt_identically(tmp_path, caplog):
    from tiny_pair_bases import synthetic_bases

    from mmdisco.pairs.fakes import presample_fakes
    from mmdisco.pairs.store import INDEX_FILE, shard_name
    from mmdisco.sampling import JointSampler

    bases = synthetic_bases()
    opts = dict(seed=1, sampler=JointSampler(bases, solver="ddim", num_steps=2), shard_size=2)
    path = presample_fakes(bases, ["a"], 4, tmp_path, batch_size=2, progress=False, **opts)
    good = {p.name: p.read_bytes() for p in path.iterdir()}
    truncate(path / shard_name(1), 0.3)
    assert repair_cache(path) == [shard_name(1)] and not (path / INDEX_FILE).exists()
    truncate(path / shard_name(0), 0.9)  # damaged again: presample_fakes repairs by itself
    (path / INDEX_FILE).write_text(json.dumps(json.loads(good[INDEX_FILE])))
    with caplog.at_level("WARNING"):
        presample_fakes(bases, ["a"], 4, tmp_path, batch_size=2, progress=False, **opts)
    assert f"{path / shard_name(0)} is damaged" in caplog.text and "rebuilt" in caplog.text
    assert {p.name: p.read_bytes() for p in path.iterdir()} == good


def test_damaged_real_latent_shard_is_rebuilt_identically(tmp_path, caplog):
    from tiny_pair_bases import synthetic_bases

    from mmdisco.data.paired import SyntheticPairs
    from mmdisco.pairs.real import cache_real_latents
    from mmdisco.pairs.store import shard_name

    data = SyntheticPairs(tmp_path / "data", num_clips=4, progress=False)
    opts = dict(shard_size=2, batch_size=2, progress=False)
    path = cache_real_latents(data, synthetic_bases(), tmp_path / "cache", **opts)
    good = {p.name: p.read_bytes() for p in path.iterdir()}
    truncate(path / shard_name(1))
    with caplog.at_level("WARNING"):
        cache_real_latents(data, synthetic_bases(), tmp_path / "cache", **opts)
    assert f"{path / shard_name(1)} is damaged" in caplog.text
    assert {p.name: p.read_bytes() for p in path.iterdir()} == good


def test_reading_a_torn_shard_names_it(tmp_path):
    from mmdisco.pairs.store import ShardedPairs, build_shards, shard_name

    def make(s):
        return {"audio": torch.ones(2, 1) * s, "video": torch.zeros(2, 1)}, {
            "count": 2, "captions": ["x", "y"], "conditional": []
        }  # fmt: skip

    out = build_shards(tmp_path / "fakes-0", {"k": 1}, 2, make, progress=False)
    pairs = ShardedPairs(out)
    truncate(out / shard_name(1))
    with pytest.raises(CorruptFileError, match=r"shard-00001.safetensors is damaged.*rebuilds it"):
        pairs[3]


def test_torn_metadata_csv_is_a_clear_error_or_regenerated(tmp_path):
    from mmdisco.data.paired import SyntheticPairs

    data = SyntheticPairs(tmp_path, num_clips=3, progress=False)
    csv_path = data.ensure_generated()
    good = csv_path.read_bytes()
    csv_path.write_bytes(good[: good.rindex(b",")])  # cut inside the last row
    with pytest.raises(CorruptFileError, match=r"metadata.csv is damaged: row 4 ends before"):
        read_metadata(csv_path)
    assert data.ensure_generated() == csv_path and csv_path.read_bytes() == good  # rewritten
    csv_path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptFileError, match="not UTF-8 text"):
        read_csv_rows(csv_path)


def test_torn_mp4_is_a_clear_media_error(tmp_path):
    from mmdisco.data.synthetic import render_clip, write_clip
    from mmdisco.media import MediaError, read_video_with_audio

    path = write_clip(tmp_path / "a.mp4", *render_clip(0, 2, (10, 10)))
    truncate(path)
    with pytest.raises(MediaError, match=r"a.mp4: (cannot open|decoding failed|no )"):
        read_video_with_audio(path)


# -- NaN / Inf in training ----------------------------------------------------------------------
@pytest.mark.parametrize("term, name", [("l_d", "L_D"), ("l_dsm", "L_DSM")])
def test_nonfinite_loss_stops_with_the_step_and_term(toy_run, cache, tmp_path, term, name):
    """NaN in step 15 (after the checkpoint of step 10): a clear error, checkpoint 10 intact."""
    proc = run(f"nan:{term}:14", "train.py", *run_args(tmp_path, cache), *SHORT, check=False)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert f"non-finite value at training step 15: {name} = nan" in message, message
    assert "checkpoint" in message and "(step 10) is left as it was" in message
    assert "train.nonfinite=skip" in message
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10 and not (tmp_path / "discriminator.safetensors").exists()
    assert not (tmp_path / ".lock").exists()  # released on the way out
    reference = load_tensors(toy_run / f"checkpoint{PREV}" / "model.safetensors")  # step 10
    assert same(load_tensors(tmp_path / "checkpoint" / "model.safetensors"), reference)


def test_nonfinite_skip_mode_counts_skipped_batches(cache, tmp_path):
    run("nan:l_d:14", "train.py", *run_args(tmp_path, cache), *SHORT, "train.nonfinite=skip")
    rows = read_csv(tmp_path / "train_log.csv")
    assert [int(r["skipped_nonfinite"]) for r in rows] == [0, 1]  # step 15: in row 20
    w = load_tensors(tmp_path / "discriminator.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values())
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)


# -- one writer per run dir ---------------------------------------------------------------------
def test_second_process_is_refused_while_the_first_holds_the_lock(cache, tmp_path):
    lock = RunLock(tmp_path).acquire()  # this test process: alive, same host
    try:
        proc = run("none", "train.py", *run_args(tmp_path, cache), *SHORT, check=False)
    finally:
        lock.release()
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in last, last
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_pid_is_taken_over(cache, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    record = {"pid": dead.pid, "host": socket.gethostname(), "since": 0}
    (tmp_path / ".lock").write_text(json.dumps(record))
    proc = run("none", "train.py", *run_args(tmp_path, cache), *SHORT)
    assert f"took over a stale lock (pid {dead.pid} on" in proc.stdout + proc.stderr
    assert (tmp_path / "discriminator.safetensors").exists()
    assert not (tmp_path / ".lock").exists()  # released on exit


def test_lock_of_a_zombie_or_a_reused_pid_is_stale(tmp_path, caplog):
    """A killed owner not yet reaped (a zombie, as the ranks of a killed launcher in a
    container) is dead; a live pid started at another time than the lock records was reused."""
    from mmdisco.runlock import process_start

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        while open(f"/proc/{zombie.pid}/stat").read().split(") ")[1][0] != "Z":
            pass  # exited, not reaped
        host = socket.gethostname()
        for pid, start in ((zombie.pid, process_start(zombie.pid)), (other.pid, 1)):
            (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": host, "start": start}))
            with caplog.at_level("WARNING"):
                RunLock(tmp_path).acquire().release()
            assert f"took over a stale lock (pid {pid} on" in caplog.text
        (tmp_path / ".lock").write_text(
            json.dumps({"pid": other.pid, "host": host, "start": process_start(other.pid)})
        )
        with pytest.raises(RunLockedError, match=f"in use by pid {other.pid}"):
            RunLock(tmp_path).acquire()  # the same pid and start: alive
    finally:
        other.kill()
        other.wait()
        zombie.wait()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0}))
    with pytest.raises(RunLockedError, match="on host elsewhere.*delete .*\\.lock"):
        RunLock(tmp_path).acquire()


# -- disk full / read-only output ---------------------------------------------------------------
def _enospc_half_way(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"x" * 100)  # part of the file, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device", filename)


def test_disk_full_leaves_no_partial_file(tmp_path, monkeypatch):
    import mmdisco.io

    save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(3)})
    before = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(mmdisco.io, "save_file", _enospc_half_way)
    with pytest.raises(OSError, match="No space left"):
        save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(3)})
    with pytest.raises(OSError, match="No space left"):
        save_tensors(tmp_path / "new.safetensors", {"a": torch.zeros(3)})
    assert sorted(os.listdir(tmp_path)) == before  # no temp file, no new final name
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["a"], torch.ones(3))

    def full_write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mmdisco.io.os, "fsync", lambda fd: full_write(None, b""))
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert sorted(os.listdir(tmp_path)) == before


def test_disk_full_during_a_checkpoint_keeps_the_last_one(toy_run, tmp_path, monkeypatch):
    import mmdisco.io

    ckpt = tmp_path / "checkpoint"
    subprocess.run(["cp", "-r", str(toy_run / "checkpoint"), str(ckpt)], check=True)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    model = torch.nn.Linear(1, 1)
    monkeypatch.setattr(mmdisco.io, "save_file", _enospc_half_way)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(ckpt, 30, model, torch.optim.Adam(model.parameters()))
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert not (tmp_path / f"checkpoint{PREV}").exists()


def test_read_only_output_leaves_nothing(tmp_path, monkeypatch):
    """A read-only directory (simulated: the tests run as root, which chmod does not stop)."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match="Read-only file system"):
        save_tensors(tmp_path / "w.safetensors", {"a": torch.ones(1)})
    assert os.listdir(tmp_path) == []


# -- config validation ----------------------------------------------------------------------------
def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides)


def test_every_bad_value_is_one_line_naming_its_key(tmp_path):
    from mmdisco.validate import ConfigError, validate_train

    for preset in ([], ["experiment=synthetic"]):
        validate_train(_compose("train", [*preset, f"run_dir={tmp_path}/r"]))  # defaults pass
    (tmp_path / "file").write_text("")
    bad = {
        "seed=-2": "seed: must be an integer >= 0, got -2",
        "train.steps=0": "train.steps: must be an integer >= 1, got 0",
        "train.lr=-1": "train.lr: must be a finite number in (0, inf), got -1",
        "train.lr_decay=linear": "train.lr_decay: must be one of cosine, got 'linear'",
        "train.ema_decay=1.0": "train.ema_decay: must be a finite number in [0, 1) or null",
        "train.nonfinite=maybe": "train.nonfinite: must be one of stop, skip, got 'maybe'",
        "loss.cond_dropout=2": "loss.cond_dropout: must be a finite number in [0, 1], got 2",
        "sampler.order=5": "sampler.order: must be one of 1, 2, 3, got 5",
        "fake.shard_size=0": "fake.shard_size: must be an integer >= 1, got 0",
        f"run_dir={tmp_path}/file": f"run_dir: {tmp_path}/file is a file, not a directory",
        "data.num_samples=0": "data.num_samples: must be an integer >= 1, got 0",
        "device=gpu": "device: must be auto, cpu or cuda[:N], got 'gpu'",
    }
    with pytest.raises(ConfigError) as info:
        validate_train(_compose("train", list(bad)))
    assert info.value.problems == [m for m in info.value.problems if m]
    assert len(info.value.problems) == len(bad)
    for expected in bad.values():
        assert any(p.startswith(expected) for p in info.value.problems), expected
    with pytest.raises(ConfigError, match="data.root: must be set.*\n.*data.csv: must be set"):
        validate_train(_compose("train", ["base=auffusion_videocrafter2", "data=vggsound"]))


def test_scripts_validate_before_any_heavy_work(toy_run, tmp_path):
    proc = run("none", "train.py", f"run_dir={tmp_path}/r", "train.lr=0", check=False)
    assert proc.returncode != 0 and "train.lr: must be a finite number" in proc.stderr
    assert not (tmp_path / "r" / "config.yaml").exists()  # stopped before train() began
    proc = run("none", "sample.py", f"run_dir={tmp_path}", "num_samples=0", check=False)
    assert f"run_dir: {tmp_path / 'config.yaml'} not found" in proc.stderr
    assert "num_samples: must be an integer >= 1, got 0" in proc.stderr
    proc = run("none", "evaluate.py", f"run_dir={toy_run}", "samples=nope.npz", check=False)
    assert f"samples: {toy_run / 'nope.npz'} not found: run scripts/sample.py" in proc.stderr
    (tmp_path / "config.yaml").write_text("base:\n  _target_: [unclosed")  # torn YAML
    proc = run("none", "sample.py", f"run_dir={tmp_path}", check=False)
    assert f"run_dir: {tmp_path / 'config.yaml'} is damaged" in proc.stderr
