"""``qalign serve`` refuses, before binding a port, what would start unsafely or wrongly."""

from __future__ import annotations

import logging

import pytest

from service.cli import serve


@pytest.fixture
def embedded_env(monkeypatch, tmp_path):
    for name in ("QALIGN_REDIS_URL", "QALIGN_API_KEYS", "QALIGN_REQUIRE_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QALIGN_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def test_serve_refuses_open_mode_when_keys_are_required(embedded_env, caplog):
    embedded_env.setenv("QALIGN_REQUIRE_API_KEYS", "true")
    with caplog.at_level(logging.ERROR, logger="qalign.api"), pytest.raises(SystemExit) as stopped:
        serve("127.0.0.1", 0)
    assert stopped.value.code == 1
    assert "QALIGN_REQUIRE_API_KEYS=false" in caplog.text and "QALIGN_API_KEYS is empty" in caplog.text


def test_serve_refuses_several_processes_in_embedded_mode(embedded_env, caplog):
    with caplog.at_level(logging.ERROR, logger="qalign.api"), pytest.raises(SystemExit) as stopped:
        serve("127.0.0.1", 0, workers=2)
    assert stopped.value.code == 1 and "--workers 1" in caplog.text
