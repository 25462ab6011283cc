"""A run killed with SIGKILL mid-training and resumed ends bitwise identical to an
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from distill.runtime.checkpoint import list_checkpoints
from distill_testkit import tiny_run

RUNNER = Path(__file__).resolve().parents[1] / "run_train.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # same arithmetic in every process


def start(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUNNER), str(config), *extra], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]


def write_config(tmp_path: Path, name: str) -> Path:
    fields = tiny_run(tmp_path, max_steps=12, checkpoint_every=4, out_dir=str(tmp_path / name))
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(fields))
    return path


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    straight_cfg, killed_cfg = write_config(tmp_path, "straight"), write_config(tmp_path, "killed")
    straight = start(straight_cfg)
    victim = start(killed_cfg, "--hang-after-step", "6")
    deadline = time.monotonic() + 240
    line = ""
    while "HANGING" not in line and time.monotonic() < deadline:
        line = victim.stdout.readline()
        if not line and victim.poll() is not None:
            break
    assert line.strip() == "HANGING 6", victim.stderr.read()[-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    killed_dir = tmp_path / "killed"
    assert [p.name for p in list_checkpoints(killed_dir)] == ["step-00000004"]  # steps 5, 6 were lost
    assert len((killed_dir / "metrics.jsonl").read_text().splitlines()) == 6

    resumed = start(killed_cfg, "--resume")
    finish(resumed)
    finish(straight)

    final = "checkpoints/step-00000012/model.safetensors"
    want, got = load_file(tmp_path / "straight" / final), load_file(killed_dir / final)
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].dtype == got[name].dtype and bool((want[name] == got[name]).all()), name
    assert (tmp_path / "straight" / final).read_bytes() == (killed_dir / final).read_bytes()

    def log(folder):
        return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]

    straight_log, resumed_log = log(tmp_path / "straight"), log(killed_dir)
    assert [r["step"] for r in resumed_log] == list(range(1, 13))
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in straight_log]
    # The two lost steps did run: the meter counts their tokens on top of the 12 kept steps.
    step_tokens = straight_log[0]["step_tokens"]
    assert straight_log[-1]["tokens"] == 12 * step_tokens
    assert resumed_log[-1]["tokens"] == 14 * step_tokens
    # ... and are kept apart, to be shown in the run record and report
    state = json.loads((killed_dir / "checkpoints" / "step-00000012" / "trainer_state.json").read_text())
    assert state["meter"]["lost_tokens"] == 2 * step_tokens
