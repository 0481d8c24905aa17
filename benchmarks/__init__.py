"""Performance and quality harnesses (not part of the test suite). Run ``pipec bench NAME``."""
