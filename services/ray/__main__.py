"""python -m services.ray: the whole stack on a local Ray cluster, until Ctrl-C.

    python -m services.ray                     # all five applications, gRPC on :9000
    python -m services.ray --apps embedding    # just some of them
    ATALAYA_GENERATION_BACKEND=sim python -m services.ray

Call it with the `application` metadata key naming the service:
    grpcurl -plaintext -H 'application: embedding' -d '{"texts": ["hi"]}' \\
        127.0.0.1:9000 atalaya.embedding.v1.EmbeddingService/Embed"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from services.ray.config import LOCAL_OVERLAY, SERVE_CONFIG, local_config
from services.ray.local import READY_LINE, ClusterSettings, LocalServe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.ray", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, default=SERVE_CONFIG, help="the serve config")
    parser.add_argument(
        "--overlay", type=Path, default=LOCAL_OVERLAY, help="overrides for this machine"
    )
    parser.add_argument("--apps", default="", help="comma-separated applications (default: all)")
    parser.add_argument("--grpc-port", type=int, default=None)
    parser.add_argument("--http-port", type=int, default=None)
    parser.add_argument("--num-cpus", type=float, default=2)
    parser.add_argument("--object-store-mb", type=int, default=500)
    parser.add_argument("--state-dir", type=Path, default=Path(".state"))
    args = parser.parse_args(argv)

    config = local_config(
        base=args.config,
        overlay=args.overlay,
        apps=[a for a in args.apps.split(",") if a],
        grpc_port=args.grpc_port,
        http_port=args.http_port,
    )
    stop = threading.Event()
    serve = LocalServe(
        config,
        ClusterSettings(
            num_cpus=args.num_cpus, object_store_mb=args.object_store_mb, state_dir=args.state_dir
        ),
    )
    try:
        serve.start()  # Ctrl-C meanwhile: KeyboardInterrupt, and the finally below
        # After ray.init, which installs a SIGTERM handler of its own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"{READY_LINE}: gRPC {serve.grpc_target}, applications {serve.app_names}", flush=True)
        stop.wait()
        print("stopping", flush=True)
    except KeyboardInterrupt:  # Ctrl-C while starting
        print("stopping", flush=True)
        return 130
    except Exception as exc:
        print(f"failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        serve.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
