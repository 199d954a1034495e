"""Sanity: flags raised after a sweep and their confirmation by a stronger re-attack."""
