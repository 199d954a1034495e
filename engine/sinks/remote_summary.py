"""The summary's block for remote targets: what was sent, cached, retried and throttled, and the run's budget.

Read from the run folder's ledger (engine/remote/ledger.py), so a resumed run shows the whole run's spend.
"""

from __future__ import annotations

from engine.remote.ledger import RunLedger

HEAD = ("target", "endpoint", "sent", "cached", "calls", "retries", "429s", "timeouts", "excluded",
        "p50 ms", "p99 ms", "run budget")


def render_remote_summary(ledger: RunLedger | None) -> str:
    """A table, one line per remote target; '' for a sweep without one."""
    if ledger is None or not ledger.doc.get("targets"):
        return ""
    lines = []
    for key, entry in sorted(ledger.targets().items()):
        lat = ledger.percentiles(key)
        p50, p99 = (f"{lat[0]:.1f}", f"{lat[1]:.1f}") if lat else ("-", "-")
        budget = entry.get("run_budget")
        spent = f"{entry.get('spent', 0)} of {budget}" if budget else f"{entry.get('spent', 0)} (no cap)"
        lines.append((key.split(":")[0], str(entry.get("endpoint", "?")), *(str(entry.get(k, 0)) for k in
                      ("sent", "cached", "calls", "retries", "throttled", "timeouts", "excluded")), p50, p99, spent))
    widths = [max(len(r[i]) for r in [HEAD, *lines]) for i in range(len(HEAD))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    table = [fmt.format(*HEAD), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in lines)]
    notes = []
    for key, entry in sorted(ledger.targets().items()):
        if key in ledger.at_start:
            before = ledger.at_start[key]
            now = int(entry.get("spent", 0)) - before
            notes.append(f"this run: {key.split(':')[0]} received {now} image(s)"
                         + (f" ({before} in earlier runs of this folder)" if before else "")
                         + ("; every answer came from finished rows or the cache" if now == 0 else ""))
    throttled = sum(int(e.get("throttled", 0)) for e in ledger.doc["targets"].values())
    if throttled:
        notes.append(f"throttled: the endpoint answered HTTP 429 {throttled} time(s); Gauntlet waited (Retry-After) "
                     "and slowed down, and nothing was lost")
    excluded = sum(int(e.get("excluded", 0)) for e in ledger.doc["targets"].values())
    if excluded:
        notes.append(f"excluded: {excluded} sample(s) whose calls failed after their retries (on_error: skip); "
                     "accuracies are over the remaining samples")
    notes.append("a black-box number is an upper bound on robust accuracy: a stronger or longer attack may do better")
    return ("remote targets (sent: images finished tasks sent; run budget: every image the endpoint received, "
            "plan checks and killed attempts included)\n") + \
        "\n".join(table) + "".join(f"\n{n}" for n in notes)
