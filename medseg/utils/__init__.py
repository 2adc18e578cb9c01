"""Shared utilities: atomic I/O, keyed pseudonyms, checkpoints as data, the build registry, CLI conventions."""
