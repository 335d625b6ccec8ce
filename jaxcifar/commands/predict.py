"""Placeholder: `jaxcifar predict` is being built."""

from __future__ import annotations

import argparse

from jaxcifar.errors import ConfigError

HELP = "(not yet available)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    raise ConfigError("jaxcifar predict is not implemented yet")
