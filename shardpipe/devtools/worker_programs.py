"""Training programs as users run them, for the worker start-up tests and the stress tool.

Each program reads the shards of a manifest with a 2-worker ``ShardLoader``, beside busy
threads (torch and numpy RNG loops, logging, fsspec's event loop), with a transform class
defined in the program itself, and checks that every epoch yields every key exactly once.
It prints ``START <pid>`` when its code starts (a worker that re-ran the program would print
it again), one ``RESULT {json}`` line per epoch or check, and ``DONE`` at the end.

``source(kind, ...)`` returns a program's text; ``command(launcher, ...)`` how to run it:
as a script (with or without a main guard), from stdin, with ``-c``, through ``exec``, as a
notebook cell executed by nbclient, or under ``torchrun``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

#: programs: what each one checks
KINDS = ("epochs", "persistent", "kill_idle", "startup_error", "spawn_unguarded", "torchrun", "indexed", "killed")

_PRELUDE = '''
import json, logging, os, signal, sys, threading, time
import numpy as np
import torch
import shardpipe
from shardpipe import ShardDataset, ShardLoader

sys.stdout.write(f"START {{os.getpid()}}\\n")
sys.stdout.flush()
MANIFEST = {manifest!r}
EXPECTED = sorted(json.load(open({keys!r})))
CONTEXT = os.environ.get("WORKER_CONTEXT", "auto")
STALL = float(os.environ.get("WORKER_STALL_TIMEOUT", "120"))


class Posterize:
    """A transform written in the program itself: a worker gets it by value or not at all."""

    def __init__(self, bits):
        self.bits = bits

    def __call__(self, img):
        return (img >> self.bits) << self.bits


_stop = threading.Event()


def _torch_busy():
    while not _stop.is_set():
        torch.randn(64, 64).sum()


def _numpy_busy():
    while not _stop.is_set():
        np.random.randint(0, 255, (64, 64))


def _logging_busy():
    log = logging.getLogger("busy")
    while not _stop.is_set():
        log.info("tick")
        time.sleep(0.001)


def _stop_busy_threads(threads):
    _stop.set()
    for t in threads:
        t.join(10)


def start_busy_threads():
    import atexit
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))
    threads = [threading.Thread(target=f, name=f.__name__, daemon=True) for f in (_torch_busy, _numpy_busy, _logging_busy)]
    for t in threads:
        t.start()
    atexit.register(_stop_busy_threads, threads)  # no torch call left running while the interpreter exits
    try:
        from fsspec.asyn import get_loop
        get_loop()
    except ImportError:
        pass


def report(**fields):
    sys.stdout.write("RESULT " + json.dumps(fields) + "\\n")  # one write: ranks share the pipe
    sys.stdout.flush()


def run_epochs(loader, epochs, label, expected=None):
    expected = EXPECTED if expected is None else expected
    for epoch in range(epochs):
        t0 = time.perf_counter()
        keys, first = [], None
        for batch in loader:
            if first is None:
                first = time.perf_counter() - t0
            assert int((batch["jpg"] & 3).max()) == 0, "the program's Posterize transform did not run"
            keys.extend(batch["__key__"])
        assert sorted(keys) == expected, f"{{label}} epoch {{epoch}}: {{len(keys)}} keys, {{len(set(keys))}} distinct"
        ctx = loader.multiprocessing_context
        report(label=label, epoch=epoch, first_batch_s=first, epoch_s=time.perf_counter() - t0,
               context=type(ctx).__name__ if ctx is not None else "default")


def dataset(**kw):
    return ShardDataset(MANIFEST, batch_size=4, transform=Posterize(2), shuffle=True, seed=3, **kw)
'''

_BODIES = {
    "epochs": """
start_busy_threads()
run_epochs(ShardLoader(dataset(), num_workers=2, multiprocessing_context=CONTEXT, stall_timeout=STALL), 2, "fresh")
""",
    "persistent": """
start_busy_threads()
run_epochs(ShardLoader(dataset(), num_workers=2, multiprocessing_context=CONTEXT, stall_timeout=STALL), 1, "fresh")
loader = ShardLoader(dataset(), num_workers=2, multiprocessing_context=CONTEXT, stall_timeout=STALL,
                     persistent_workers=True)
run_epochs(loader, 2, "persistent")
""",
    "kill_idle": """
start_busy_threads()
from shardpipe import WorkerDiedError
pid_dir = os.environ["WORKER_PID_DIR"]

def note_pid(worker_id):
    open(os.path.join(pid_dir, str(worker_id)), "w").write(str(os.getpid()))

ds = ShardDataset(MANIFEST, batch_size=2, transform=Posterize(2))
loader = ShardLoader(ds, num_workers=2, multiprocessing_context=CONTEXT, stall_timeout=STALL,
                     prefetch_factor=2, worker_init_fn=note_pid)
it = iter(loader)
next(it)
time.sleep(1.5)  # both workers have filled their prefetch slots: idle, nothing in flight
victim = int(open(os.path.join(pid_dir, "1")).read())
os.kill(victim, signal.SIGKILL)
killed = time.monotonic()
try:
    for _ in it:
        pass
    report(error=None)
except WorkerDiedError as e:
    report(error=type(e).__name__, message=str(e), detect_s=time.monotonic() - killed, victim=victim)
""",
    "startup_error": """
start_busy_threads()
from shardpipe import WorkerStartError

class NeedsADevice(Posterize):
    def __setstate__(self, state):
        raise RuntimeError("NeedsADevice cannot be rebuilt in this process: no device here")

run_epochs(ShardLoader(dataset(), num_workers=2, multiprocessing_context=CONTEXT, stall_timeout=STALL), 1, "fresh")
t0 = time.monotonic()  # the workers' server is up: what follows is the failing start alone
try:
    run_epochs(ShardLoader(ShardDataset(MANIFEST, batch_size=4, transform=NeedsADevice(2)), num_workers=2,
                           multiprocessing_context=CONTEXT, stall_timeout=STALL), 1, "failing")
    report(error=None)
except WorkerStartError as e:
    report(error=type(e).__name__, message=str(e), detect_s=time.monotonic() - t0)
""",
    "spawn_unguarded": """
from shardpipe import WorkerStartError
t0 = time.monotonic()
try:
    run_epochs(ShardLoader(dataset(), num_workers=2, multiprocessing_context="spawn", stall_timeout=STALL), 1, "x")
    report(error=None)
except WorkerStartError as e:
    report(error=type(e).__name__, message=str(e), detect_s=time.monotonic() - t0)
""",
    "indexed": """
start_busy_threads()
from torch.utils.data import DataLoader
ds = shardpipe.IndexedDataset(MANIFEST, transform=Posterize(2))
for epoch in range(2):
    ctx = shardpipe.worker_context(ds)
    loader = DataLoader(ds, batch_size=None, shuffle=True, num_workers=2, multiprocessing_context=ctx, timeout=STALL)
    keys = []
    for sample in loader:
        assert int((sample["jpg"] & 3).max()) == 0, "the program's Posterize transform did not run"
        keys.append(sample["__key__"])
    assert sorted(keys) == EXPECTED, f"epoch {epoch}: {len(keys)} keys, {len(set(keys))} distinct"
    report(label="indexed", epoch=epoch, context=type(ctx).__name__)
""",
    "killed": """
from multiprocessing import resource_tracker
from shardpipe.workerstart import server_pid

def note_pid(worker_id):
    open(os.path.join(os.environ["WORKER_PID_DIR"], str(os.getpid())), "w").close()

def worker_pids(n):
    pid_dir = os.environ["WORKER_PID_DIR"]
    while len(os.listdir(pid_dir)) < n:
        time.sleep(0.05)
    return sorted(map(int, os.listdir(pid_dir)))

# -- main --
# one idle thread, as tqdm's monitor or TensorBoard's writer: "auto" starts the workers from its forkserver
threading.Thread(target=threading.Event().wait, name="idle", daemon=True).start()
if os.environ.get("KILLED_NO_PIDFD"):  # as on a kernel without pidfd_open: workers watch their start pipe
    import shardpipe.workerstart
    shardpipe.workerstart._own_pidfd = lambda: None
n = 2
if os.environ.get("KILLED_PERSISTENT"):  # a persistent loader whose workers sit idle after their epoch
    idle = ShardLoader(dataset(), num_workers=2, persistent_workers=True, stall_timeout=STALL, worker_init_fn=note_pid)
    run_epochs(idle, 1, "persistent")
    n = 4
if os.environ.get("KILLED_INDEXED"):  # random access through a plain DataLoader
    import multiprocessing
    from torch.utils.data import DataLoader
    from shardpipe import IndexedDataset
    loader = DataLoader(IndexedDataset(MANIFEST), batch_size=4, shuffle=True, num_workers=2,
                        worker_init_fn=note_pid, multiprocessing_context=multiprocessing.get_context(CONTEXT),
                        timeout=STALL)
else:
    loader = ShardLoader(dataset(), num_workers=2, stall_timeout=STALL, worker_init_fn=note_pid,
                         multiprocessing_context=CONTEXT)
it = iter(loader)
next(it)
if CONTEXT == "forkserver":  # the standard library's server
    from multiprocessing import forkserver
    server = forkserver._forkserver._forkserver_pid
else:
    server = server_pid()
report(ready=True, context=type(loader.multiprocessing_context).__name__, workers=worker_pids(n),
       forkserver=server, tracker=resource_tracker._resource_tracker._pid)
while True:  # slow steps (the workers wait with full prefetch slots) until killed
    for batch in it:
        time.sleep(2)
    it = iter(loader)
""",
    "torchrun": """
import torch.distributed as dist
dist.init_process_group("gloo")
start_busy_threads()
loader = ShardLoader(dataset(), num_workers=2, multiprocessing_context=CONTEXT, stall_timeout=STALL)
for epoch in range(2):
    keys = [k for batch in loader for k in batch["__key__"]]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, keys)
    merged = sorted(k for part in everyone for k in part)
    assert merged == EXPECTED, f"epoch {epoch}: {len(merged)} keys over the ranks, {len(set(merged))} distinct"
    report(label="torchrun", rank=dist.get_rank(), epoch=epoch, keys=len(keys))
dist.destroy_process_group()
""",
}


#: in a body, the end of what stays at module level under a main guard (functions a worker imports)
MODULE_LEVEL_END = "# -- main --\n"


def source(kind: str, manifest: str, keys: str, guard: bool = False) -> str:
    """The text of program ``kind`` over ``manifest`` (expected keys in the JSON file ``keys``); with
    ``guard``, the body (after ``MODULE_LEVEL_END`` where it has one) runs under a main guard."""
    body = textwrap.dedent(_BODIES[kind]).strip("\n") + '\nsys.stdout.write("DONE\\n")\nsys.stdout.flush()\n'
    prelude = textwrap.dedent(_PRELUDE).format(manifest=manifest, keys=keys)
    if not guard:
        return prelude + body.replace(MODULE_LEVEL_END, "")
    top, _, body = body.rpartition(MODULE_LEVEL_END)  # what a worker must import from the module stays there
    prelude += top
    return (
        prelude + "\n\ndef main():\n" + textwrap.indent(body, "    ") + '\n\nif __name__ == "__main__":\n    main()\n'
    )


#: how a program is launched
LAUNCHERS = ("script", "stdin", "dash_c", "exec", "notebook", "torchrun")


def command(launcher: str, program: Path) -> tuple[list[str], bytes | None]:
    """(argv, stdin bytes) that run the program saved at ``program`` the way ``launcher`` names."""
    py = sys.executable
    if launcher == "script":
        return [py, str(program)], None
    if launcher == "stdin":
        return [py, "-"], program.read_bytes()
    if launcher == "dash_c":
        return [py, "-c", program.read_text()], None
    if launcher == "exec":
        driver = (
            "import sys\nsrc = open(sys.argv[1]).read()\n"
            "exec(compile(src, '<training program>', 'exec'), {'__name__': '__main__'})\n"
        )
        return [py, "-c", driver, str(program)], None
    if launcher == "notebook":
        return [py, "-c", _NOTEBOOK_DRIVER, str(program)], None
    if launcher == "torchrun":
        return [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(program)], None
    raise ValueError(f"unknown launcher {launcher!r}; one of {LAUNCHERS}")


# The program split into cells: the prelude (and its class) in one cell, the loop in the next,
# executed by a real ipykernel (whose own threads are alive), outputs printed to stdout.
_NOTEBOOK_DRIVER = """
import sys
import nbformat
from nbclient import NotebookClient
src = open(sys.argv[1]).read()
head, sep, tail = src.partition("\\nstart_busy_threads()\\n")
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell(head), nbformat.v4.new_code_cell(sep + tail)]
NotebookClient(nb, timeout=300, kernel_name="python3").execute()
for cell in nb.cells:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            sys.stdout.write(out["text"])
        elif out.get("output_type") == "error":
            sys.stdout.write("\\n".join(out["traceback"]) + "\\n")
"""


def parse_results(stdout: str) -> list[dict]:
    """The ``RESULT`` lines of a program's output."""
    return [json.loads(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")]
