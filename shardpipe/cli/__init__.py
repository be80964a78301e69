"""The ``shardpipe`` command: one module per subcommand, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

import shardpipe
from shardpipe.cli.common import EXIT_STATUS, INTERRUPTED_STATUS, PrintableFormatter

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("shardpipe.cli.demo", "generate a small dataset, write shards, stream them, print throughput"),
    "write": ("shardpipe.cli.write", "pack a folder, ImageFolder tree, CSV/JSONL list or LMDB into shards"),
    "index": ("shardpipe.cli.index", "write a manifest and index for existing tar/tgz shards (any tool's)"),
    "restart": ("shardpipe.cli.restart", "rewrite existing shards with restart-marked JPEGs (lossless, faster crops)"),
    "inspect": ("shardpipe.cli.inspect", "summarise shards: samples, extensions, bytes, image sizes"),
    "verify": ("shardpipe.cli.verify", "decode every sample and check manifest counts and checksums"),
    "bench": ("shardpipe.cli.bench", "per-stage throughput and side-by-side comparison with baselines"),
    "serve": ("shardpipe.cli.serve", "run a decode server that streams ready batches to trainers (RemoteLoader)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="shardpipe", description="Fast sharded image loading for training.", epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--version", action="version", version=f"shardpipe {shardpipe.__version__}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # build only the parser of the command asked for: the others' imports cost start-up time
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, epilog=EXIT_STATUS,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        if name == wanted:
            module = importlib.import_module(module_name)
            p.epilog = f"{EXIT_STATUS}\n{module.EXIT_DETAILS}" if hasattr(module, "EXIT_DETAILS") else EXIT_STATUS
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(PrintableFormatter("%(levelname)s %(message)s"))  # log lines name files too
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # output to a pipe is buffered: a reader that went away shows up here
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a socket or a worker's pipe: a real error, shown as one
        return _stdout_closed()
    except KeyboardInterrupt:  # a command that keeps nothing part-done (index, inspect, verify, bench)
        print(f"shardpipe {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS
    return status


def entry() -> None:
    """The ``shardpipe`` command and ``python -m shardpipe``: :func:`main`, then exit with its status.

    After Ctrl-C it exits at once: the exit handlers run (a Ray driver's shutdown, logging's), but
    threads still blocked on a store (an existence check or a read that stalled) are not waited
    for, which Python would do first, holding the terminal for up to the reads' timeout x tries.
    """
    status = main()
    if status != INTERRUPTED_STATUS:
        raise SystemExit(status)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its reader gone: nothing more to say
            pass
    os._exit(status)


#: the status of a command whose reader closed its output (``shardpipe inspect ... | head``):
#: 128 + SIGPIPE, what the shell reports for a tool that SIGPIPE stopped (as 130 for Ctrl-C)
BROKEN_PIPE = 141


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll says so); where it cannot tell, assume so."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # no poll() (Windows) or no file behind stdout
        return True
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _stdout_closed() -> int:
    """Stop quietly when stdout's reader has gone: no traceback, no second error at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter flushes stdout again at exit
    os.close(devnull)
    return BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
