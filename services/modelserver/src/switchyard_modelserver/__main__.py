"""`switchyard-modelserver --config FILE`: run a model server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from switchyard_common import logs
from switchyard_common.configfile import ConfigError
from switchyard_modelserver.backends.registry import UnknownBackendError, available_backends
from switchyard_modelserver.config import load_modelserver_config
from switchyard_modelserver.server import BackendFailedError, serve


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, loads the config and serves until stopped."""
    parser = argparse.ArgumentParser(prog="switchyard-modelserver", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--listen", help="override the config's listen address (host:port)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=("text", "json"), help="default: $SWITCHYARD_LOG_FORMAT or text"
    )
    parser.add_argument("--list-backends", action="store_true", help="print installed backends")
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    if args.list_backends:
        print("\n".join(available_backends()))
        return 0
    if args.config is None:
        parser.error("--config is required")
    try:
        config = load_modelserver_config(args.config)
        if args.listen:
            config = config.model_copy(update={"listen": args.listen})
        _run(serve(config))
    except (ConfigError, UnknownBackendError) as error:
        logging.getLogger("switchyard.modelserver").error("%s", error)
        return 2
    except BackendFailedError:
        return 1  # logged where it happened; a restart may help
    return 0


def _run(coroutine: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coroutine)  # type: ignore[arg-type]
    else:
        uvloop.run(coroutine)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
