"""engine/runners/progress.py: the unit of work, an honest ETA, retries roll back, one line per task and per worker."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from engine.evaluation.evaluate import _LevelAccount
from engine.evaluation.tasks import Task, TaskResult
from engine.perturbations.autoattack import APGD
from engine.perturbations.base import BatchContext
from engine.perturbations.fab import FABTargeted
from engine.perturbations.norms import get_norm
from engine.perturbations.square import Square
from engine.perturbations.suite import AttackSuite, MemberContext
from engine.runners.base import WorkBatcher
from engine.runners.progress import SweepProgress, WorkerStats, balance, format_duration, work_per_sample
from tests.conftest import run_cli, tiny_overrides


def _task(i: int, n: int = 10) -> Task:
    return Task(task_id=f"t{i}", run_id="r", model_name="m", model={}, checkpoint_sha256="s", dataset_name="d",
                dataset={}, perturbation_name=f"p{i}", perturbation={}, start=0, stop=n, seed=0, batch_size=5)


def _result(task: Task, worker: str, seconds: float) -> TaskResult:
    return TaskResult(task, {}, "attack", None, seconds, "cpu", worker)


class FakeClock:
    """Seconds that move only when a test says so: nothing here depends on the machine's speed."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_work_is_samples_times_per_sample_work_and_the_eta_is_unknown_until_work_is_done() -> None:
    a, b = _task(0), _task(1)
    clock = FakeClock()
    p = SweepProgress([a, b], {"t0": 1, "t1": 7}, live=False, clock=clock)
    assert p.total_estimate() == 10 * 1 + 10 * 7  # the plan, before anything is known
    assert p.eta() is None  # nothing done: unknown, never "00:00"
    p.worker_ready("w", "cpu")
    clock.t += 5.0
    p.work(b, 35, 0, 0, 5.0)  # half of b's plan in 5 s
    assert p.done_units() == 35
    assert p.eta() == pytest.approx(5.0 + 10 * 5.0 / 35)  # b's other half, then a at b's cost per eval
    p.work(b, 500, 0, 0, 1.0)  # over-spending settles no more than the plan, but counts as done
    assert p.done_units() == 535 and p.acct["t1"].open == 0
    p.close()


def test_a_retried_task_gives_back_its_progress_and_the_running_names_are_current() -> None:
    a, b = _task(0), _task(1)
    p = SweepProgress([a, b], {"t0": 2, "t1": 2}, live=False)
    p.task_started(a, "w0")
    p.task_started(b, "w1")
    assert p.running_text() == f"running {a.describe()}; {b.describe()}"
    p.work(a, 10, 0, 0, 1.0)
    p.task_retried(a, "worker lost")
    assert p.done_units() == 0 and p.running_text() == f"running {b.describe()}"
    p.close()


def test_work_found_unnecessary_shrinks_the_total_and_the_eta_converges() -> None:
    """A suite task whose samples break early: each batch of 10 samples is planned at 10 × 1,000 evals, spends
    1,000 of them in 2 s and finds the rest unnecessary. The total is revised at once, the ETA from the first
    batch on is the true remaining time, and a report after the result is void."""
    suite = dataclasses.replace(_task(0, n=50), perturbation_name="aa")
    clock = FakeClock()
    p = SweepProgress([suite], {"t0": 1000}, live=False, clock=clock)
    p.worker_ready("local", "cpu")
    p.task_started(suite, "local")
    assert p.total_estimate() == 50_000
    etas = []
    for _batch in range(5):
        for _ in range(4):  # the member's own reports, every 0.5 s
            clock.t += 0.5
            p.work(suite, 250, 0, 0, 0.5)
        p.work(suite, 0, 9_000, 10, 0.0)  # the batch ends: the rest of its plan was not needed
        etas.append(p.eta())
        assert p.total_estimate() == 5_000  # done + the open plan at the share really spent (10 %)
    assert etas[:4] == pytest.approx([8.0, 6.0, 4.0, 2.0]) and etas[4] == 0.0
    p.finished(_result(suite, "local", 10.0))
    p.work(suite, 99, 0, 0, 1.0)  # late: void
    assert p.done_units() == 50_000  # a result without cost columns is settled at its plan
    p.close()


def test_the_eta_shares_the_work_among_workers_and_counts_their_idle_time() -> None:
    a, b = _task(0), _task(1)
    clock = FakeClock()
    p = SweepProgress([a, b], {"t0": 10, "t1": 10}, live=False, clock=clock)
    p.worker_ready("ray-0", "cpu")
    p.worker_ready("ray-1", "cpu")
    clock.t += 4.0
    p.work(a, 50, 0, 0, 4.0)
    p.work(b, 50, 0, 0, 4.0)  # both kept busy: 100 evals open at 0.08 s each over 2 workers
    assert p.eta() == pytest.approx(100 * 0.08 / 2)
    clock.t += 4.0  # then 4 s without a report: the workers were busy only half of the time
    assert p.eta() == pytest.approx(100 * 0.08 / 2 / 0.5)
    p.close()


def test_the_batcher_hands_on_progress_at_most_every_interval_with_its_seconds() -> None:
    clock = FakeClock()
    sent: list[tuple[int, int, int, float]] = []
    batcher = WorkBatcher(lambda *r: sent.append(r), 0.5, clock=clock)
    for _ in range(10):  # 10 reports in 0.4 s: none sent yet
        clock.t += 0.04
        batcher(3, 1)
    batcher.batch_done(8)
    assert sent == []
    clock.t += 0.1
    batcher(3, 1)
    assert sent == [(33, 11, 8, pytest.approx(0.5))]
    batcher.flush()  # nothing new: nothing sent
    batcher(1, 0)
    batcher.flush()
    assert len(sent) == 2 and sent[1][:3] == (1, 0, 0)


def test_the_seconds_per_sample_follow_the_machine_and_replace_the_plan_once_a_batch_is_done() -> None:
    """Before a whole batch of a model × perturbation is done, its ETA is its open plan at the cost per planned
    eval so far; after, its samples left at the seconds per sample of its batches, recent ones weighted more
    (a machine whose load halves runs the next batches at its new speed), less the running batch's time."""
    t = dataclasses.replace(_task(0, n=40), perturbation_name="aa")
    clock = FakeClock()
    p = SweepProgress([t], {"t0": 100}, live=False, clock=clock)
    p.worker_ready("local", "cpu")
    p.work(t, 200, 0, 0, 4.0)  # 200 of 4,000 planned evals in 4 s, no batch done yet
    assert p.eta() == pytest.approx(3_800 * 4.0 / 200)
    p.work(t, 100, 700, 10, 2.0)  # the first batch of 10 took 6 s: 0.6 s per sample
    assert p.eta() == pytest.approx(30 * 0.6)
    p.work(t, 100, 900, 10, 2.0)  # the second took 2 s: the average moves halfway (RECENT = 0.5)
    assert p.eta() == pytest.approx(20 * 0.4)
    p.work(t, 20, 0, 0, 1.0)  # 1 s into the third batch
    assert p.eta() == pytest.approx(20 * 0.4 - 1.0)
    p.close()


def test_one_line_per_finished_task_and_one_per_worker(caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = _task(0), _task(1), _task(2)
    p = SweepProgress([a, b, c], {}, live=False)
    with caplog.at_level(logging.INFO, logger="engine.runners.progress"):
        for w in ("ray-0", "ray-1"):
            p.worker_ready(w, "cpu")
        p.finished(_result(a, "ray-0", 1.0))
        p.finished(_result(b, "ray-0", 1.0))
        p.finished(_result(c, "ray-1", 2.0))
        stats = p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith(f"[1/3] {a.describe()} done in 1.0 s on ray-0 (cpu)")
    assert "ETA" in lines[2] and lines[2].startswith("[3/3]")
    assert any(s.startswith("worker ray-0 on cpu: 2 task(s), 20 samples, 10.0 samples/s, busy") for s in lines)
    assert lines[-1] == "balance over 2 workers: busiest / idlest busy time = 1.00"
    assert {s.name: s.tasks for s in stats} == {"ray-0": 2, "ray-1": 1}


def test_live_bar_names_the_running_task_and_counts_evals() -> None:
    a = _task(0)
    out = io.StringIO()
    p = SweepProgress([a], {"t0": 3}, live=True, stream=out)
    p.worker_ready("local", "cpu")
    p.task_started(a, "local")
    p.work(a, 15, 0, 0, 0.1)
    text = out.getvalue()
    assert "15/30 evals" in text and f"running {a.describe()}" in text and "0/1 tasks" in text
    p.finished(_result(a, "local", 0.5))
    p.close()
    assert "30/30 evals" in out.getvalue() and "1/1 tasks" in out.getvalue()


def _lines(text: str) -> list[str]:
    """What a terminal shows: each \\r returns to the start of the line (the last drawing is what stays)."""
    return [line.split("\r")[-1].rstrip() if line.split("\r")[-1].strip() else line.rstrip("\r ")
            for line in text.split("\n")]


@pytest.mark.parametrize("columns", [80, 120])
def test_the_bar_stays_within_the_terminal_width(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """At COLUMNS=80, every drawing of the bar (every segment between carriage returns) fits in 79 columns,
    with the task counts and the ETA kept and a long running-task name cut, not wrapped."""
    monkeypatch.setenv("COLUMNS", str(columns))
    tasks = [dataclasses.replace(_task(i, n=450), model_name="wrn_28_10_dm_cifar10_linf_long_name",
                                 perturbation_name="autoattack_standard_linf") for i in range(3)]
    out = io.StringIO()
    p = SweepProgress(tasks, {t.task_id: 6900 for t in tasks}, live=True, stream=out)
    p.worker_ready("ray-0", "cuda:0@a-long-host-name")
    for i, t in enumerate(tasks):
        p.task_started(t, f"ray-{i}")
        p.work(t, 123_456, 1_000_000, 0, 3.0)
    p.finished(_result(tasks[0], "ray-0", 9.0))
    p.close()
    drawings = [seg for seg in out.getvalue().replace("\n", "\r").split("\r") if seg.strip()]
    assert drawings and max(len(d) for d in drawings) <= columns - 1, max(drawings, key=len)
    last = drawings[-1]
    assert "1/3 tasks" in last and "<" in last and "%|" in last
    assert ("running" in last) if columns == 120 else ("…" in last or "running" not in last)


def test_log_lines_and_printed_lines_go_above_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the bar is live, a log record and a line printed to stderr (Ray's worker logs) are written whole on
    their own line, the bar cleared before and drawn again after; everything is put back at the end."""
    fake = io.StringIO()
    monkeypatch.setattr("sys.stderr", fake)
    handler = logging.StreamHandler(fake)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        a = _task(0)
        p = SweepProgress([a], {"t0": 1}, live=True)
        p.task_started(a, "ray-0")
        print("(GauntletWorker pid=123) a worker line", file=sys.stderr)
        logging.getLogger("engine.test").warning("a warning from the driver")
        assert sys.stderr is not fake and handler.stream is not fake  # routed while live
        p.close()
        assert sys.stderr is fake and handler.stream is fake  # and put back
    finally:
        root.removeHandler(handler)
    shown = _lines(fake.getvalue())
    assert "(GauntletWorker pid=123) a worker line" in shown and "a warning from the driver" in shown
    after = fake.getvalue().split("a warning from the driver\n", 1)[1]
    assert "%|" in after  # the bar is drawn again below the lines


def test_balance_and_durations() -> None:
    s = [WorkerStats("a", "cpu", busy_s=2.3), WorkerStats("b", "cpu", busy_s=2.0)]
    assert balance(s) == pytest.approx(1.15)
    assert balance(s[:1]) is None
    assert balance([*s, dataclasses.replace(s[0], busy_s=0.0)]) == float("inf")
    assert format_duration(None) == "?" and format_duration(65) == "01:05" and format_duration(3725) == "1:02:05"


def test_progress_false_logs_each_task_with_its_time(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli(*tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,contrast]"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "[1/2] digits_cnn × clean [0:20] done in" in proc.stderr
    assert "[2/2] digits_cnn × contrast [0:20] done in" in proc.stderr
    assert "worker local on cpu: 2 task(s), 40 samples" in proc.stderr


def test_work_per_sample_follows_the_attack_budget(tiny_checkpoint: Path) -> None:
    from engine.evaluation.resources import build_perturbation
    from tests.conftest import compose_dict

    cfg = compose_dict(["perturbation=[clean,gaussian_noise,fgsm_linf,pgd_linf,autoattack_standard_linf]"])
    work = {n: work_per_sample(build_perturbation(n, c)) for n, c in cfg["perturbation"].items()}
    pgd = build_perturbation("pgd_linf", cfg["perturbation"]["pgd_linf"])
    assert work["clean"] == 1 and work["gaussian_noise"] == 5  # one per level
    assert work["fgsm_linf"] == len(cfg["perturbation"]["fgsm_linf"]["eps"])
    assert work["pgd_linf"] == len(pgd.levels) * pgd.steps * pgd.restarts
    assert work["autoattack_standard_linf"] > 50 * work["pgd_linf"] / pgd.steps  # a suite's budget dominates


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 64, 10)).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return net


def _suite(eps: tuple[float, ...]) -> AttackSuite:
    return AttackSuite(name="aa", norm="linf", eps=eps, attacks=(
        APGD(name="apgd-ce", n_iter=10), APGD(name="apgd-t", loss="dlr-targeted", n_iter=10, n_target_classes=3),
        FABTargeted(name="fab-t", n_iter=10, n_target_classes=3),
        Square(name="square", n_queries=40, tags=("black-box",))))


def test_a_suite_reports_inside_the_batch_and_each_level_books_exactly_its_plan() -> None:
    """Reports arrive while the members run (many per level), the evals reported are exactly the rows' gradient
    evaluations and queries, and each level books its plan: spent, plus the rest as unnecessary."""
    model = _tiny_model()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    suite = _suite((0.0, 0.005, 0.05, 0.3))
    reports: list[tuple[int, int]] = []
    account = _LevelAccount(lambda sp, sk: reports.append((sp, sk)))
    ctx = BatchContext(model, 0, torch.arange(12), progress=account.report)
    per_level = []
    for out in suite.run(x, y, ctx):
        inside = len(reports)
        account.settle(suite, out, 12)
        cost = int(out.grad_evals.sum()) + int(out.queries.sum())
        per_level.append((inside, cost, sum(sp for sp, _ in reports), sum(sp + sk for sp, sk in reports)))
    plan = 12 * suite.planned_evals
    spent_total = 0
    booked_total = 0
    for _inside, cost, spent, booked in per_level:
        spent_total += cost
        booked_total += max(plan, cost)
        assert (spent, booked) == (spent_total, booked_total)
    assert per_level[2][0] - per_level[1][0] > 10  # the members reported as they went, not once per level
    skipped = sum(sk for _, sk in reports)
    assert skipped > 0.5 * 12 * 4 * suite.planned_evals  # most of the plan was found unnecessary ...
    assert per_level[-1][1] < 12 * 40  # ... at ε=0.3 every sample breaks early: Square's 40 queries are not spent


def test_square_stops_counting_a_sample_once_it_is_broken() -> None:
    model = _tiny_model()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    spent: list[int] = []
    square = Square(name="square", n_queries=200, tags=("black-box",))
    ctx = MemberContext(model, get_norm("linf"), 0.3, 10, tuple(range(16)), 0, on_spent=spent.append)
    res = square.attack(x, y, ctx)
    assert sum(spent) == int(res.queries.sum())  # every query reported, nothing more
    assert int(res.success.sum()) >= 12 and sum(spent) < 16 * 200 / 4  # broken samples stopped querying
    apgd_spent: list[int] = []
    apgd = APGD(name="apgd-ce", n_iter=20, n_restarts=2)
    ctx = dataclasses.replace(ctx, eps=0.02, on_spent=apgd_spent.append)
    res = apgd.attack(x, y, ctx)
    assert sum(apgd_spent) == int(res.grad_evals.sum()) + int(res.queries.sum())


RECORDINGS = Path(__file__).parent / "recordings"


@pytest.mark.parametrize("name", ["progress_mixed_sweep", "progress_eps_curve_shards"])
def test_the_eta_of_a_recorded_sweep_is_within_30_percent_of_the_real_remaining_time(name: str) -> None:
    """Real sweeps replayed on a fake clock (``scripts/record_progress.py``): clean, two corruptions and AutoAttack
    standard L∞ on digits_cnn and digits_cnn_at at ε = 0.2, 64 samples in batches of 16 (``progress_mixed_sweep``);
    the same on digits_cnn_at alone with an ε curve (0.1, 0.2, 0.3), 48 samples in 3 shards of 2 batches
    (``progress_eps_curve_shards``). At 25, 50 and 75 % of the elapsed time the ETA is within ±30 % of the time
    the sweep really still took (docs/BENCHMARKS.md, "Progress"); the estimator it replaced (whole samples at
    batch ends, every planned eval counted) missed by more than 30 % at half time on the same events."""
    from scripts.record_progress import replay

    doc = json.loads((RECORDINGS / f"{name}.json").read_text())
    assert any("autoattack" in o for o in doc["overrides"]) and any("gaussian_noise" in o for o in doc["overrides"])
    errors = {f: (eta - left) / left for f, (eta, left) in replay(doc, "new").items()}
    assert all(abs(e) <= 0.30 for e in errors.values()), errors
    old = {f: (eta - left) / left for f, (eta, left) in replay(doc, "old").items()}
    assert abs(old[0.5]) > 0.30, old
