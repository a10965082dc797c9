from typing import get_args

from qalign_schema.problems import PROBLEM_KINDS, ProblemKind


def test_every_kind_has_one_meaning_in_the_literal_order():
    assert list(PROBLEM_KINDS) == list(get_args(ProblemKind))


def test_kinds_are_listed_by_status():
    """Clients and docs/service.md read the table top to bottom: 400s first, 503 last."""
    statuses = [int(meaning.split(":", 1)[0]) for meaning in PROBLEM_KINDS.values()]
    assert statuses == sorted(statuses)
