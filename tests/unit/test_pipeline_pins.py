"""The reference pipeline's components declare, pinned, every package they import.

On a cluster each task starts from the bare base image and installs only its `packages_to_install`; the
embedded local runner runs the same tasks in mlcd's own environment, where the pins must already hold
(else its pip would change mlcd's environment under it).
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import shlex
import sys
import textwrap
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from tests.support import wine_pipeline


@pytest.fixture(scope="module")
def components() -> ModuleType:
    return wine_pipeline.components()


def _declared(component: object) -> list[Requirement]:
    """The pinned requirements in the task's install script (the command KFP runs before the function)."""
    command = component.component_spec.implementation.container.command  # type: ignore[attr-defined]
    (script,) = [part for part in command if "pip install" in part]
    return [Requirement(word) for word in shlex.split(script) if "==" in word and not word.startswith("-")]


def _imports(component: object) -> set[str]:
    source = textwrap.dedent(inspect.getsource(component.python_func))  # type: ignore[attr-defined]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names)


NAMES = ("load_batch", "train_model", "register_model")


@pytest.mark.parametrize("name", NAMES)
def test_each_component_declares_every_package_it_imports(components: ModuleType, name: str) -> None:
    component = getattr(components, name)
    declared = {r.name.lower() for r in _declared(component)}
    providers = importlib.metadata.packages_distributions()

    missing = {
        module
        for module in _imports(component)
        if not {d.lower() for d in providers.get(module, [module])} & declared
    }
    assert missing == set(), f"{name} imports {missing} without declaring a package for it"
    assert "kfp" in declared  # the task's executor


@pytest.mark.parametrize("name", NAMES)
def test_every_pin_is_exact_and_already_holds_in_mlcds_environment(components: ModuleType, name: str) -> None:
    for requirement in _declared(getattr(components, name)):
        (spec,) = requirement.specifier
        assert spec.operator == "==", requirement
        assert importlib.metadata.version(requirement.name) == spec.version, requirement
