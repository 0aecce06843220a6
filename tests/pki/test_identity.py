"""Name grants: which cells a certificate's holder may be."""

from __future__ import annotations

import hashlib

import pytest

from fl_core.pki.identity import admin_cell_prefix, grant_refusal
from fl_core.spec.security import Identity

SITE = Identity("site-1", "hospital-a", "site", 7)
SERVER = Identity("server.example.org", "nvidia", "server", 8)
ADMIN = Identity("alice@a.org", "a", "lead", 9)
PREFIX = "admin-" + hashlib.sha256(b"alice@a.org").hexdigest()[:16]


def test_the_admin_prefix_is_a_hash_of_the_email() -> None:
    assert admin_cell_prefix("alice@a.org") == PREFIX
    assert admin_cell_prefix("bob@a.org") != PREFIX


@pytest.mark.parametrize(
    ("identity", "cell"),
    [
        (SITE, "site-1"),
        (SITE, "site-1.job7"),
        (SITE, "site-1.job7.trainer"),
        (SERVER, "server"),
        (SERVER, "server.job7"),
        (ADMIN, PREFIX),
        (ADMIN, PREFIX + "-1a2b"),
    ],
)
def test_granted(identity: Identity, cell: str) -> None:
    assert grant_refusal(identity, cell) == ""


@pytest.mark.parametrize(
    ("identity", "cell", "words"),
    [
        (SITE, "site-2", "a site certificate grants only site-1 and cells under it"),
        (SITE, "site-10", "grants only site-1"),
        (SITE, "site-1x", "grants only site-1"),
        (SITE, "server", "grants only site-1"),
        (SITE, PREFIX, "grants only site-1"),
        (SERVER, "site-1.server", "grants only 'server'"),
        (SERVER, "serverx", "grants only 'server'"),
        (SERVER, "site-1", "grants only 'server'"),
        (ADMIN, "server", "admin certificate grants only cells named " + PREFIX),
        (ADMIN, admin_cell_prefix("bob@a.org"), "grants only cells named " + PREFIX),
        (ADMIN, PREFIX + "x", "grants only cells named"),
        (ADMIN, PREFIX + ".job", "grants only cells named"),
        (Identity("x", "o", "guest"), "x", "the role 'guest' grants no cell"),
        (Identity("site-1"), "site-1", "grants no cell"),
    ],
)
def test_refused_with_the_reason(identity: Identity, cell: str, words: str) -> None:
    assert words in grant_refusal(identity, cell)
