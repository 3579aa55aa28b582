"""Two-process jobs (torchrun, gloo) meet a hung peer, a rank that raises and damaged images
inside shards, as a user's job would: a SIGSTOPped rank makes the other one stop within
``train.dist_timeout_s`` with a line naming the timeout and the step; a rank that raises
brings the job down; either way a resume from the newest checkpoint ends with the
uninterrupted job's weights and EMA bit for bit. Under ``data.on_bad_file=skip`` the
damaged images are skipped and counted for the whole job alike, and the ranks stay in step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from helpers import assert_same_training_state, tiny_run, torchrun_standalone, torchrun_workers
from resnext.checkpoint import load_checkpoint, step_checkpoints
from resnext.config import DataConfig
from resnext.data.pack import pack_dataset

pytestmark = pytest.mark.slow

# The tiny ResNeXt on packed digits: 180 train images in 9 shards of 20; each of the two
# processes streams its own shards, ceil(90 / 16) = 6 steps an epoch, 18 in all.
RUN = tiny_run(
    "data.name=webdataset",
    "data.shuffle_buffer=50",
    "train.batch_size=16",
    "train.epochs=3",
    "train.checkpoint_every_steps=2",
    "train.ema_decay=0.9",
    "train.ema_bn=copy",
    "train.log_every=1",
    "train.tensorboard=false",
    "train.threads=1",
)
TIMEOUT_S = 5  # train.dist_timeout_s of the faulty jobs


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "digits"
    cfg = DataConfig(test_fraction=0.8)  # digits: 180 train, 179 val
    pack_dataset(
        cfg, out, shard_samples=20, splits=["train", "val"], progress=False, say=lambda _: None
    )
    return out


def _torchrun(packed: Path, out: Path, name: str, *extra: str) -> subprocess.Popen:
    cmd = torchrun_standalone("-m", "resnext", "train", *RUN, f"data.root={packed}",
           f"train.output_dir={out}", f"train.run_name={name}", *extra)  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _finish(job: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        out, _ = job.communicate()
        pytest.fail(f"the job did not end within {timeout} s:\n{out}")
    return job.returncode, out


@pytest.fixture(scope="module")
def straight(packed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted two-process job."""
    out = tmp_path_factory.mktemp("straight")
    code, log = _finish(_torchrun(packed, out, "straight"))
    assert code == 0, log
    return out / "straight"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_hung_peer_stops_the_waiting_rank_naming_the_timeout_and_the_step(
    packed: Path, straight: Path, tmp_path: Path
) -> None:
    job = _torchrun(packed, tmp_path, "run", f"train.dist_timeout_s={TIMEOUT_S}")
    run = tmp_path / "run"
    try:
        deadline = time.monotonic() + 240
        while not step_checkpoints(run):  # a checkpoint to come back to, then the hang
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        ranks = torchrun_workers(job.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.monotonic()
        while _alive(ranks[0]):
            assert time.monotonic() - stopped < TIMEOUT_S + 60, "rank 0 still waits"
            time.sleep(0.1)
        waited = time.monotonic() - stopped
        os.kill(ranks[1], signal.SIGKILL)  # what a scheduler does to a hung process
        code, log = _finish(job, 120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert code != 0
    assert waited >= TIMEOUT_S - 1
    found = re.search(
        rf"resnext train: error: a collective waited longer than train.dist_timeout_s="
        rf"{TIMEOUT_S} s for a peer process \(rank 0 of 2 was waiting\) after step (\d+) "
        r"\(epoch \d, batch \d\); the job stops",
        log,
    )
    assert found, log
    assert int(found[1]) >= step_checkpoints(run)[0][0]
    print(f"\nhung peer: rank 0 stopped {waited:.1f} s after the SIGSTOP: {found[0]}")
    print(f"newest checkpoint: step {step_checkpoints(run)[0][0]}")
    # Resumed from the newest checkpoint, the job ends as the uninterrupted one.
    code, log = _finish(_torchrun(packed, tmp_path, "run", "--resume"))
    assert code == 0, log
    assert_same_training_state(run, straight)
    assert load_checkpoint(run / "last.pt")["step"] == 18  # the whole job


def _damage_member(shard: Path, index: int = 0) -> bytes:
    """Zero one PNG inside ``shard`` after its header (signature and IHDR, 33 bytes): its
    pixel data cut short, the shard's size unchanged, as a file damaged in transit. Returns
    the shard's bytes before."""
    before = shard.read_bytes()
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".png")][index]
    data = bytearray(before)
    data[member.offset_data + 33 : member.offset_data + member.size] = bytes(member.size - 33)
    shard.write_bytes(bytes(data))
    return before


def test_damaged_images_in_shards_are_skipped_and_counted_alike_on_both_ranks(
    packed: Path, tmp_path: Path
) -> None:
    """One damaged image in each of the 9 train shards. Each process reads its own shards (5
    or 4 an epoch; a few samples past the equal share of batches are left out of an epoch),
    yet each epoch record counts what the whole job skipped so far: more than one process
    reads, all 9 by the end; and the job ends in step (18 steps)."""
    copy = tmp_path / "pack"
    copy.mkdir()
    for f in packed.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    for shard in sorted(copy.glob("train-*.tar")):
        _damage_member(shard)
    code, log = _finish(_torchrun(copy, tmp_path, "run", "data.on_bad_file=skip"))
    assert code == 0, log
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    epochs = [r for r in records if r["kind"] == "epoch"]
    counts = [r["skipped_files"] for r in epochs]
    assert counts == sorted(counts) and counts[0] > 5 and counts[-1] == 9, counts
    assert epochs[-1]["step"] == 18
    assert log.count("unreadable file(s) (data.on_bad_file=skip)") == 3  # rank 0's lines only
    print(f"\nskipped per epoch record: {counts}")


def test_a_rank_that_raises_brings_the_job_down_and_the_job_resumes_exactly(
    packed: Path, straight: Path, tmp_path: Path
) -> None:
    """A damaged image under data.on_bad_file=error stops the rank that reads it, naming the
    shard and the image; the job ends; put right, it resumes to the uninterrupted weights."""
    copy = tmp_path / "pack"
    copy.mkdir()
    for f in packed.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    code, log = _finish(_torchrun(copy, tmp_path, "run", "train.max_steps=8"))
    assert code == 0, log
    shard = copy / "train-000004.tar"
    intact = _damage_member(shard, 3)
    started = time.monotonic()
    job = _torchrun(copy, tmp_path, "run", f"train.dist_timeout_s={TIMEOUT_S}", "--resume")
    code, log = _finish(job, 240)
    assert code != 0
    assert re.search(rf"error: .*\d{{8}}\.png in shard {re.escape(str(shard))}", log), [
        x for x in log.splitlines() if "error" in x
    ]
    assert time.monotonic() - started < 240
    print("\nraise:", [x for x in log.splitlines() if "error:" in x or "exitcode" in x])
    print(f"job ended {time.monotonic() - started:.1f} s after its launch")
    print(f"newest checkpoint: step {step_checkpoints(tmp_path / 'run')[0][0]}")
    shard.write_bytes(intact)
    code, log = _finish(_torchrun(copy, tmp_path, "run", "--resume"))
    assert code == 0, log
    assert_same_training_state(tmp_path / "run", straight)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 18  # the whole job
