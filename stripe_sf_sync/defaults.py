"""Defaults the command line shows before anything else is imported (config.py imports pydantic)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("sync.yaml")
