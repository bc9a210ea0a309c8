"""``model-router serve``: one router, or a supervisor with N workers, until SIGTERM/SIGINT;
SIGHUP reloads."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .app import RouterApp
from .runtime import run

if TYPE_CHECKING:
    from ..control.reload import Reloader
    from .workers import Supervisor

log = logging.getLogger("model_router")


async def _serve(config_path: Path, workers: int = 1, port: int | None = None,
                 admin_port: int | None = None, grpc_port: int | None = None) -> int:
    app: RouterApp | Supervisor
    if workers > 1:
        from .workers import Supervisor  # loaded only for --workers
        app = Supervisor(config_path, workers, port=port, admin_port=admin_port,
                         grpc_port=grpc_port)
    else:
        app = RouterApp(config_path, port=port, admin_port=admin_port, grpc_port=grpc_port)
    try:
        await app.start()
    except ConfigError as exc:
        for line in exc.errors:
            log.error("%s", line)
        return 1
    except (OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    reloader = app.reloader
    assert reloader is not None  # start() built it
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_sighup() -> None:
        app.tasks.spawn(_reload_quietly(reloader))

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    log.info("signal received: draining")
    await app.stop()
    return 0


async def _reload_quietly(reloader: Reloader) -> None:
    try:
        await reloader.reload("sighup")
    except ConfigError:
        pass  # logged, counted and kept in history by the reloader


def serve(config_path: str | Path, workers: int = 1, port: int | None = None,
          admin_port: int | None = None, grpc_port: int | None = None) -> int:
    """Run the router until SIGTERM/SIGINT; returns the process exit code. ``port``,
    ``admin_port`` and ``grpc_port`` override the file's (its revision stays the same)."""
    return int(run(_serve(Path(config_path), workers, port, admin_port, grpc_port)))
