"""README.md's code stays true: its Python example runs as written, from the repository root."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_library_example_runs_as_written(shared_data, monkeypatch):
    (example,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    monkeypatch.chdir(REPO)  # its data_dir is "../shared/data", relative to the root
    assert (REPO / "../shared/data").resolve() == shared_data.resolve()
    names: dict = {}
    exec(compile(example, "README.md", "exec"), names)  # noqa: S102 - the README's own code
    assert names["train"].images.shape == (50000, 32, 32, 3)
    assert len(names["small"]) == 5000
    assert names["logits"].shape == (8, 10)


def test_ci_runs_the_readme_test_command_verbatim():
    # The quick start's second command is what CI runs: the two must not drift apart.
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) == 2, commands  # install and train; install and test
    ci_lines = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == commands[1]
    assert "pytest" in commands[1]
