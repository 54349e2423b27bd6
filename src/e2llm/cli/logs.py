"""Console logging for the long-running commands (`serve`, `bench`, `profile`): `--log-level`.

The packages log through `logging.getLogger(__name__)` and never configure logging themselves;
the command line gives the `e2llm` loggers one readable console handler (time, level, module,
message) on stderr. Other libraries' loggers (Ray, uvicorn) keep their own settings.
"""

from __future__ import annotations

import argparse
import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="info",
        choices=LEVELS,
        help="what to log on stderr: device loss, re-plans, errors... (default %(default)s)",
    )


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (a test may have swapped it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(level: str) -> None:
    """Send the `e2llm` loggers' records at `level` and above to stderr (idempotent)."""
    logger = logging.getLogger("e2llm")
    logger.setLevel(level.upper())
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
