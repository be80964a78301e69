"""A program that builds a DALI decoder, drops or closes it, then forks (as DataLoader workers are
started): the child collects garbage, where it would free the parent's DALI pipeline.

usage: python dali_fork_prog.py drop|close|keep|loader
"""

import gc
import os
import sys
import time

import torch

from shardpipe.batchdecode.dali import DaliBatchDecoder
from shardpipe.devtools.synth import make_jpeg


def fork_and_collect() -> str:
    pid = os.fork()
    if pid == 0:
        gc.collect()
        os._exit(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"child {os.waitstatus_to_exitcode(status)}"
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "child hung"


def collect_in_worker(worker: int) -> None:
    gc.collect()


how = sys.argv[1]
gc.disable()  # this process never collects: what it drops stays garbage that a child may free
decoder = DaliBatchDecoder(32, device="cpu", batch_size=4, num_threads=2, seed=1)
images, kept = decoder.decode([make_jpeg(i, plain=True) for i in range(4)])
assert images.shape == (4, 3, 32, 32) and kept == [0, 1, 2, 3], (images.shape, kept)
if how == "close":
    decoder.close()
elif how in ("drop", "loader"):
    decoder.cycle = decoder  # the decoder garbage in a cycle, and its pipeline with it
    del decoder
if how == "loader":
    loader = torch.utils.data.DataLoader(range(4), num_workers=1, worker_init_fn=collect_in_worker, timeout=60)
    print("batches", [b.tolist() for b in loader])
else:
    print(fork_and_collect())
if how == "keep":  # the parent's decoder works on after the fork
    print("parent", decoder.decode([make_jpeg(5, plain=True)])[1])
