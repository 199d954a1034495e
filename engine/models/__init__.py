"""Classifiers: architectures, the normalising wrapper, and safe checkpoint loading."""
