"""One run folder, one process: a second `train` on a folder in use stops at once naming the holder's PID, and a
killed holder (kill -9) leaves nothing to clean: `--resume` takes the lock."""

import os
import signal
import subprocess
import sys
import time

from clcpmt.cli import main
from test_train import tiny

CLI = [sys.executable, "-c", "import sys; from clcpmt.cli import main; sys.exit(main(sys.argv[1:]))"]


def start(args):
    return subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, limit=180):
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_two_new_runs_started_together_one_trains_the_other_stops(tmp_path):
    args = ["train", *tiny(tmp_path, "r", **{"train.epochs": 1, "train.steps_per_epoch": 2})]
    a, b = start(args), start(args)
    codes = sorted(p.wait(timeout=300) for p in (a, b))
    assert codes == [0, 2]
    loser = next(p for p in (a, b) if p.returncode == 2)
    err = loser.stderr.read()
    assert "is in use by another clcpmt process (PID" in err and err.count("error:") == 1
    assert (tmp_path / "r" / "metrics.json").is_file() and not list((tmp_path / "r" / "logs").glob("resume_*"))


def test_resume_beside_the_holder_stops_and_after_kill_9_takes_the_lock(tmp_path, capsys):
    run = tmp_path / "r"
    holder = start(["train", *tiny(tmp_path, "r", **{"train.epochs": 3, "train.steps_per_epoch": 4})])
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), holder)
    os.kill(holder.pid, signal.SIGSTOP)  # frozen mid-run, still holding the lock (as a slow epoch would)
    second = subprocess.run([*CLI, "train", "--resume", str(run)], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"(PID {holder.pid})" in second.stderr
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0  # a reader needs no lock
    assert f"{run} is still training (process {holder.pid})" in capsys.readouterr().out
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert not (run / "metrics.json").exists()
    resumed = subprocess.run([*CLI, "train", "--resume", str(run)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "metrics.json").is_file() and (run / "logs" / "resume_1").is_dir()
