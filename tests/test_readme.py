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


def test_every_test_the_docs_cite_exists():
    # docs/failure-modes.md and others prove each case by naming its test: a renamed or
    # removed test must not leave a claim that nothing proves.
    cited = set()
    for doc in [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("benchmarks/*.md")]:
        cited |= set(re.findall(r"(test_\w+\.py)::(test_\w+)", doc.read_text()))
    assert len(cited) > 50
    missing = [
        f"{file}::{name}" for file, name in sorted(cited)
        if not (REPO / "tests" / file).exists()
        or not re.search(rf"^def {name}\(", (REPO / "tests" / file).read_text(), re.MULTILINE)
    ]  # fmt: skip
    assert not missing
