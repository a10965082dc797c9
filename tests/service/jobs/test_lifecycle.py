"""The lifecycle module alone decides a job's life: its typed outcomes are built nowhere else, and the
hosts that act on them (the Celery task and signals, the embedded thread) hold no decision on a job's
status. Plus the decisions that have no other test: what a run's end does to its broker message."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from service.jobs import Job, lifecycle, new_job_id, transitions, utcnow
from service.jobs.lifecycle import ClaimKind, Delivery, Run, RunKind
from service.jobs.model import STATUSES
from service.settings import Settings

REPO = Path(__file__).resolve().parents[3]
SOURCES = [p for folder in ("service", "worker", "qalign_cli") for p in (REPO / folder).rglob("*.py")]
LIFECYCLE = REPO / "service" / "jobs" / "lifecycle.py"
#: The hosts: they map outcomes to their own actions and decide nothing about a job's status.
HOSTS = [*(REPO / "worker").rglob("*.py"), REPO / "service" / "jobs" / "embedded.py"]


def _called_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def test_only_the_lifecycle_module_constructs_outcomes():
    names = {kind.__name__ for kind in lifecycle.OUTCOME_TYPES}
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno} {_called_name(node)}"
        for path in SOURCES
        if path != LIFECYCLE
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and _called_name(node) in names
    ]
    assert offenders == []
    built = {
        _called_name(node)
        for node in ast.walk(ast.parse(LIFECYCLE.read_text()))
        if isinstance(node, ast.Call)
    }
    assert {"Claim", "Run", "MessageOutcome", "Republish"} <= built, "the scan itself finds the outcomes"


def _status_decisions(tree: ast.AST) -> list[int]:
    """Lines comparing a ``.status`` or a status value, or naming ``transitions``: decisions on a status."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            status_read = any(isinstance(p, ast.Attribute) and p.attr == "status" for p in parts)
            status_value = any(isinstance(p, ast.Constant) and p.value in STATUSES for p in parts)
            if status_read or status_value:
                found.append(node.lineno)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            if any(name.endswith("transitions") for name in names):
                found.append(node.lineno)
    return found


@pytest.mark.parametrize("path", HOSTS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_task_signals_and_embedded_thread_hold_no_status_decision(path):
    assert _status_decisions(ast.parse(path.read_text())) == []


def test_the_scan_sees_a_status_decision():
    assert _status_decisions(ast.parse("if job.status == 'queued': pass")) == [1]
    assert _status_decisions(ast.parse("from service.jobs import transitions")) == [1]
    assert _status_decisions(ast.parse("x = job.status if job else 'gone'")) == []


def job(**fields) -> Job:
    base = {"id": new_job_id(), "created_at": utcnow(), "structure_key": "s", "appearance_keys": ["a"]}
    return Job(**{**base, **fields})


def test_what_a_run_does_to_its_message():
    settings = Settings(_env_file=None, heartbeat_ttl=10, job_time_limit=100)
    running = transitions.start(job(), "w:1")
    succeeded = lifecycle.ran(transitions.succeed(running, results=[], params={}, metrics={}), "w:1", 1)
    assert (
        succeeded.kind is RunKind.FINISHED and lifecycle.delivery(succeeded, settings).action is Delivery.ACK
    )
    requeued = lifecycle.ran(lifecycle.requeue(running, "stop", 3, refund=True), "w:1", 1)
    assert requeued.kind is RunKind.REQUEUED
    assert lifecycle.delivery(requeued, settings).action is Delivery.REQUEUE
    held = lifecycle.not_run(lifecycle.claimed(running, running, "w:2"))
    later = lifecycle.delivery(held, settings)
    assert held.kind is RunKind.HELD and later.action is Delivery.RETRY_LATER and later.countdown == 10
    assert later.max_retries * later.countdown >= settings.job_hard_time_limit, "outlasts the holder's limit"
    taken_over = lifecycle.ran(running.model_copy(update={"worker": "w:2", "attempts": 2}), "w:1", 1)
    assert taken_over.kind is RunKind.LOST and lifecycle.delivery(taken_over, settings).action is Delivery.ACK
    assert lifecycle.ran(None, "w:1", 1).kind is RunKind.ERASED
    unknown = lifecycle.claimed(None, None, "w:1")
    assert (
        unknown.kind is ClaimKind.UNKNOWN
        and lifecycle.delivery(lifecycle.not_run(unknown), settings).status is None
    )
    outage = lifecycle.store_unreachable(settings, RuntimeError("down"))
    assert outage.action is Delivery.REQUEUE and 0 < outage.pause <= 5
    assert isinstance(held, Run)


def test_recovery_leaves_this_process_jobs_and_requeues_the_rest():
    mine, gone = transitions.start(job(), "embedded:me"), transitions.start(job(), "embedded:gone")
    assert lifecycle.recover("embedded:me", 3)(mine) is None
    recovered = lifecycle.recover("embedded:me", 3)(gone)
    assert recovered is not None and recovered.status == "queued" and recovered.worker is None
