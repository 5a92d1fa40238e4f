"""Glue for the Snakemake rule scripts: logging to the rule's log file, one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from costack.errors import CostackError


def setup_logging(log_path: str | None = None, level: int = logging.INFO) -> None:
    """Log to ``log_path`` (the rule's ``log:``) and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def run_step(snakemake: Any, step: Callable[[], Any]) -> None:
    """Run a rule's step with logging; a CostackError becomes one line and exit status 1."""
    setup_logging(snakemake.log[0] if len(snakemake.log) else None)
    try:
        step()
    except CostackError as err:
        logging.getLogger("costack").error("%s", err)
        print(f"costack: error: {err}", file=sys.stderr)
        sys.exit(1)
