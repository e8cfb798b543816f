"""`switchyard-router --config FILE`: run the router."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from switchyard_common import logs
from switchyard_common.configfile import ConfigError
from switchyard_router.config import load_router_config
from switchyard_router.server import serve


def main(argv: list[str] | None = None) -> int:
    """Parses arguments, loads the config and serves until stopped."""
    parser = argparse.ArgumentParser(prog="switchyard-router", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="YAML config file")
    parser.add_argument("--listen", help="override the config's listen address (host:port)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=("text", "json"), help="default: $SWITCHYARD_LOG_FORMAT or text"
    )
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        config = load_router_config(args.config)
        if args.listen:
            config = config.model_copy(update={"listen": args.listen})
        if os.environ.get("SWITCHYARD_EVENT_LOOP", "uvloop") == "asyncio":
            asyncio.run(serve(config, args.config, bool(args.listen)))
            return 0
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            asyncio.run(serve(config, args.config, bool(args.listen)))
        else:
            uvloop.run(serve(config, args.config, bool(args.listen)))
    except ConfigError as error:
        logging.getLogger("switchyard.router").error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
