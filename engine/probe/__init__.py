"""The availability probe (``gauntlet probe``): latency and errors of an upload endpoint under increasing
concurrency, then crafted inputs (largest allowed, oversized, malformed, decompression bomb, slow client) and
whether the service stayed up and still answered correctly afterwards (docs/threat-model.md, denial of service).

``payloads.py`` builds the crafted files, ``run.py`` runs the phases under a request cap and a deadline,
``cli.py`` is the command. Every request goes through ``engine.remote.raw``.
"""
