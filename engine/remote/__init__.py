"""Remote targets: a model Gauntlet reaches only through queries, and the one oracle that owns every query.

``api.py`` is the contract attacks code against (``Oracle``, ``Answer``, the budget error); the oracle's
implementations (in-process model, Open Inference Protocol, file-upload endpoint) live beside it. This is the
only room that talks to the network.
"""
