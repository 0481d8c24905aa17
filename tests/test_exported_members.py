"""Each package's __all__ is exactly its public surface, and every listed name exists."""

import importlib

import pytest


@pytest.mark.parametrize("package", ["programs", "metrics", "optimizers", "experiments"])
def test_all_lists_every_public_name(package):
    module = importlib.import_module(package)
    public = {name for name in vars(module) if not name.startswith("_")}
    submodules = {name for name, value in vars(module).items() if type(value).__name__ == "module"}
    assert set(module.__all__) == public - submodules
    assert all(hasattr(module, name) for name in module.__all__)
