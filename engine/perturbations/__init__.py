"""Perturbations: clean, adversarial attacks and corruptions behind one protocol."""
