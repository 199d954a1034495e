"""``gauntlet transfer``: one sweep of models × (white-box attack + a transfer from each model), and its matrix."""
