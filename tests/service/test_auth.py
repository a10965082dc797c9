from __future__ import annotations

import pytest

from service.auth import AuthError, KeyRing, hash_key, new_key


def ring():
    alice, bob = "alice-key", "bob-key"
    return KeyRing.from_settings(
        f"alice:{hash_key(alice)}, bob:{hash_key(bob)}", f"old:{hash_key('old-key')}"
    )


def test_open_mode_without_keys():
    assert KeyRing.from_settings(None, None).open
    assert KeyRing.from_settings("", "").owner(None) is None


def test_keys_map_to_their_owner():
    assert ring().owner("Bearer alice-key") == "alice"
    assert ring().owner("bearer bob-key") == "bob"


@pytest.mark.parametrize(
    "header,status",
    [
        (None, 401),
        ("", 401),
        ("Basic abc", 401),
        ("Bearer ", 401),
        ("Bearer wrong", 401),
        ("Bearer old-key", 403),
    ],
)
def test_refusals(header, status):
    with pytest.raises(AuthError) as info:
        ring().owner(header)
    assert info.value.status == status and info.value.detail


def test_malformed_entries_are_a_clear_error():
    with pytest.raises(ValueError, match="name:sha256hex"):
        KeyRing.from_settings("alice:not-a-hash", None)


def test_new_keys_are_long_and_distinct():
    keys = {new_key() for _ in range(10)}
    assert len(keys) == 10 and all(len(k) > 40 for k in keys)


def test_key_helper_prints_a_working_entry(capsys, monkeypatch):
    import sys

    from service.auth import KeyRing, main

    monkeypatch.setattr(sys, "argv", ["service.auth", "carol"])
    main()
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    key, entry = lines["key"].strip(), lines["entry"].strip()
    assert KeyRing.from_settings(entry, None).owner(f"Bearer {key}") == "carol"
