"""`python -m jaxcifar` runs the command line."""

from jaxcifar.cli import run_program

run_program()
