"""Step-time benchmarks of the training step, side by side with NumPy and PyTorch, and timed
seed-recipe runs by epoch path.

One concern per module: `settings` (what a run measures; no JAX, so the CLI imports it),
`timing` (timed loops, percentiles), `xla_cost` (FLOPs, a program's device
memory, kernel counts and bytes), `device_profile` (a traced call's device time by kernel),
`rows` (one row per case, ratios between rows), `environment`
(machine and versions), `peak` (the machine's matmul roof), `jax_cases` / `numpy_reference` /
`torch_reference` (what is measured), `suite` (a whole run) and `output` (JSON, markdown,
plot). `jaxcifar bench` drives them; torch is imported only inside `torch_reference`'s
functions. `seed_recipe` times whole seed-recipe runs by `--epoch-mode` path, for
benchmarks/seed_recipe.py.
"""
