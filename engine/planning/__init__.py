"""Plan: validate a composed sweep and list its tasks with stable ids."""
