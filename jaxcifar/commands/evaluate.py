"""Placeholder: `jaxcifar evaluate` is being built."""

from __future__ import annotations

import argparse

from jaxcifar.errors import ConfigError

HELP = "(not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    raise ConfigError("jaxcifar evaluate is not implemented yet")
