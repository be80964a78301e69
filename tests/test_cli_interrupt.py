"""Ctrl-C ends a command at once, with one line and exit status 130, even with requests stalled on a store.

The existence check and the reads run in threads; Python waits for every such thread before a
process exits, so a Ctrl-C during a stall held the terminal until the stalled requests ran out of
time (the read options' timeout x tries, ~1 minute with the CLI's defaults) and then printed a
KeyboardInterrupt traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardpipe import ShardWriter
from shardpipe.devtools.synth import make_dataset

from .test_cli_read_options import outputs

pytestmark = pytest.mark.servers

#: one try that would wait 250 s: longer than the hang guard below
PATIENT = json.dumps({"timeout": 250, "retries": 0})


@pytest.mark.timeout(200)
@pytest.mark.parametrize("stalled", ["HEAD", "GET"])  # the existence check, or the command's own reads
@pytest.mark.parametrize("command", ["index", "inspect", "verify", "restart"])
def test_ctrl_c_during_a_stalled_request_exits_at_once_with_130(misbehaving, tmp_path: Path, command: str, stalled):
    with ShardWriter(f"{tmp_path}/s-%06d.tar", maxcount=3) as w:
        for key, jpg, cls in make_dataset(3, seed=5):
            w.write({"__key__": key, "jpg": jpg, "cls": str(cls).encode()})
    misbehaving.put(
        "stalled/s-000000.tar", (tmp_path / "s-000000.tar").read_bytes(), stall=300, stall_gets=stalled == "GET"
    )
    url = misbehaving.url("stalled/s-000000.tar")
    argv = [sys.executable, "-m", "shardpipe.cli", command, url, *outputs(command, tmp_path), "--read-options", PATIENT]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's foreground job
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not misbehaving.requests(stalled) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert misbehaving.requests(stalled), f"the command sent no {stalled} (stderr: {proc.stderr.read()})"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to the whole foreground group
        out, err = proc.communicate(timeout=60)  # hang guard: the stalled request would take 250 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    if command == "restart":  # says what it keeps
        assert last == "interrupted: finished shards are kept; run the same command again to continue"
    else:
        assert last == f"shardpipe {command}: interrupted"
