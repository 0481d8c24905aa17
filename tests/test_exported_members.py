"""Each package's __all__ is exactly its public surface, and every listed name exists."""

import importlib

import pytest


@pytest.mark.parametrize("package", ["programs", "metrics", "optimizers", "experiments"])
def test_all_lists_every_public_name(package):
    module = importlib.import_module(package)
    # dir(), not vars(): a package that loads its names on first use (experiments) lists them there.
    public = {name for name in dir(module) if not name.startswith("_")}
    submodules = {name for name, value in vars(module).items() if type(value).__name__ == "module"}
    assert set(module.__all__) == public - submodules
    assert all(hasattr(module, name) for name in module.__all__)


def test_no_lazily_loaded_name_is_also_a_module_of_its_package():
    # Once experiments/<name>.py is imported, the package's attribute <name> is that module, so
    # `from experiments import <name>` would give the module instead of the name loaded on first use.
    from pathlib import Path

    import experiments

    modules = {path.stem for path in Path(experiments.__file__).parent.glob("*.py")}
    assert not set(experiments.__all__) & modules
