import pytest

from experiments.datasets import load_dataset, split_dataset
from programs.builtin import Triage, builtin_dataset


@pytest.fixture
def split():
    """The triage dataset's seeded train/val split, as pipec compile makes it."""
    examples = load_dataset(str(builtin_dataset("triage")), Triage()).examples
    return split_dataset(examples, seed=0)
