"""Subcommands beyond `config`, registered into the CLI. Heavy imports stay
inside the functions so `longrope --help` starts fast."""

from __future__ import annotations

import argparse

from .cli import _REGISTRY


def register(sub: argparse._SubParsersAction) -> None:
    del sub  # filled as the commands arrive


_REGISTRY.append(register)
