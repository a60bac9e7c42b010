"""What the Pi installs (schemas/ + edge/) and what the bridge image holds (schemas/ + cloud/)
import nothing of the development tooling (dev/: local servers, simulators, ``make lab``), the
operator's commands (tools/) or each other; the Ansible converge test checks the same on a Pi's
real venv (test_edge_role.py), the compose tests the image's build context."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
# A name given as text to importlib, on purpose: the LJM stand-in, asked for by backend = "standin"
# only, and refused with a typed error where soclab-dev is not installed.
LAZY = {("edge/soclab/edge/instruments/labjack_t7/backend.py", "soclab.dev.sim.instruments.labjack_t7")}


def imported(path: Path) -> set[str]:
    """Modules a file imports or names as text, but for the ``simulator=`` of a ``Kind``: where
    its development simulator is, for the simulator command (a name the Pi never imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pointers = {
        id(kw.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Kind"
        for kw in node.keywords
        if kw.arg == "simulator"
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in pointers:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("soclab.")
        ):
            names.add(node.value.partition(":")[0])
    return names


@pytest.mark.parametrize(
    ("folders", "forbidden"),
    [
        (("schemas", "edge"), ("soclab.dev", "soclab.tools", "soclab.cloud")),  # the Pi
        (("schemas", "cloud"), ("soclab.dev", "soclab.tools", "soclab.edge")),  # the bridge image
    ],
    ids=["pi", "bridge-image"],
)
def test_deployed_code_imports_no_development_code(
    folders: tuple[str, ...], forbidden: tuple[str, ...]
) -> None:
    found = []
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            for name in imported(path):
                if name.startswith(forbidden) and (rel, name) not in LAZY:
                    found.append(f"{rel}: {name}")
    assert found == []


@pytest.mark.parametrize("distribution", ["edge", "cloud", "schemas"])
def test_deployed_distributions_depend_on_no_development_distribution(distribution: str) -> None:
    project = tomllib.loads((REPO / distribution / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        d for ds in project.get("optional-dependencies", {}).values() for d in ds
    ]
    assert not [d for d in wanted if d.startswith(("soclab-dev", "soclab-tools"))]
