"""Model extraction (``gauntlet extract``): steal a copy of a target through its oracle, measure how faithful it
is, and attack the target through it (docs/extraction.md).

``settings.py`` reads the command line, ``queries.py`` builds the attacker's query set, ``train.py`` trains a
copy from the target's answers, ``transfer.py`` crafts examples on a copy and sends them once, ``store.py`` keeps
the run folder (identity, answers, one row file per budget), ``run.py`` drives a run and ``cli.py`` is the command.
"""
