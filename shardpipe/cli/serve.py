"""``shardpipe serve CONFIG.yaml``: run a decode server that streams batches to trainers.

Binds to 127.0.0.1 unless ``--bind`` names another interface. On start it prints one
JSON line, ``{"listening": ENDPOINT, "pid": ..., "workers": ..., "worker_pids": [...]}``, so scripts can use
``--bind tcp://127.0.0.1:*`` (any free port) and read the port back.
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    from shardpipe.serve.server import DEFAULT_BIND, MAX_CLIENTS

    p.add_argument("config", help="pipeline config (YAML: dataset, transform, loader), as in configs/")
    p.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        help=f"ZMQ endpoint to listen on (default {DEFAULT_BIND}: loopback only; tcp://0.0.0.0:PORT exposes it)",
    )
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the config's num_workers)")
    p.add_argument("--heartbeat", type=float, default=0.5, help="seconds between heartbeats to busy trainers")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=900.0,
        help="seconds after which the parts of a silent trainer are cancelled (it can take them up again)",
    )
    p.add_argument(
        "--max-clients",
        type=int,
        default=MAX_CLIENTS,
        help=f"trainers that may hold parts at once (default {MAX_CLIENTS}); a further one is refused",
    )
    p.add_argument("--curve-secret", help="CURVE: this server's secret key file (zmq.auth .key_secret)")
    p.add_argument("--curve-clients", help="CURVE: folder of the public key files of allowed trainers")


def run(args: argparse.Namespace) -> int:
    import yaml

    from shardpipe.cli.common import DATA_PROBLEM, USAGE, fail
    from shardpipe.configfile import ConfigError
    from shardpipe.errors import ListenError, ShardpipeError
    from shardpipe.serve.server import Server

    try:
        server = Server(
            args.config,
            bind=args.bind,
            workers=args.workers,
            heartbeat=args.heartbeat,
            idle_timeout=args.idle_timeout,
            curve_secret=args.curve_secret,
            curve_clients=args.curve_clients,
            max_clients=args.max_clients,
        )
    except FileNotFoundError as e:
        if e.filename == args.config:
            return fail("serve", f"config not found: {args.config}", USAGE)
        return fail("serve", f"{args.config} names what does not exist: {e}", USAGE)
    except ConfigError as e:  # it names the file, the key and its line
        return fail("serve", e, USAGE)
    except yaml.YAMLError as e:
        return fail("serve", f"{args.config} is not valid YAML: {e}", USAGE)
    except ShardpipeError as e:  # the config's data: a shard or manifest it names is damaged
        return fail("serve", e, DATA_PROBLEM)
    except (TypeError, ValueError, OSError) as e:
        return fail("serve", f"{args.config}: {e}", USAGE)

    def ready(s: Server) -> None:
        print(
            json.dumps(
                {"listening": s.endpoint, "pid": os.getpid(), "workers": s.workers, "worker_pids": s.worker_pids}
            ),
            flush=True,
        )

    try:
        server.run(on_ready=ready)
    except KeyboardInterrupt:
        pass
    except ListenError as e:
        return fail("serve", e, USAGE)
    return 0
