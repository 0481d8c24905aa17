"""``python -m experiments`` runs the pipec CLI."""

from experiments.cli import main

main()
