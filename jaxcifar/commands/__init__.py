"""Sub-commands of the `jaxcifar` command line (see `jaxcifar.cli`)."""
