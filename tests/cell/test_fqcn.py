"""Fully qualified cell names: what parses, what does not, and why."""

from __future__ import annotations

import pytest

from fl_core.cell.fqcn import FQCN, MAX_LENGTH, is_under, parent_of, validate
from fl_core.errors import CellError, InvalidFQCNError


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("server", ("server",)),
        ("server.job1", ("server", "job1")),
        ("site-1.job_1.trainer", ("site-1", "job_1", "trainer")),
        ("7", ("7",)),
        ("A" + "b" * 63, ("A" + "b" * 63,)),
    ],
)
def test_valid_names_parse_into_their_segments(text: str, parts: tuple[str, ...]) -> None:
    name = FQCN.parse(text)
    assert name.parts == parts
    assert str(name) == text
    assert validate(text) == text


def test_root_parent_and_child() -> None:
    name = FQCN.parse("site-1.job1.trainer")
    assert name.root == "site-1"
    assert name.parent == FQCN.parse("site-1.job1")
    assert FQCN.parse("server").parent is None
    assert FQCN.parse("server").child("job1") == FQCN.parse("server.job1")
    assert parent_of("site-1.job1") == "site-1"
    assert parent_of("site-1") is None


def test_is_ancestor_of_is_strict_and_segment_wise() -> None:
    server = FQCN.parse("server")
    assert server.is_ancestor_of(FQCN.parse("server.job1"))
    assert server.is_ancestor_of(FQCN.parse("server.job1.x"))
    assert not server.is_ancestor_of(server)
    assert not server.is_ancestor_of(FQCN.parse("server2.job1"))
    assert not FQCN.parse("server.job1").is_ancestor_of(server)


def test_is_under_matches_whole_segments_only() -> None:
    assert is_under("server.job1", "server")
    assert is_under("server", "server")
    assert not is_under("server2", "server")
    assert not is_under("server", "server.job1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty name"),
        (".server", "segment 1 is empty"),
        ("server.", "segment 2 is empty"),
        ("server..job", "segment 2 is empty"),
        ("server job", "must start with a letter or digit"),
        ("server/job", "must start with a letter or digit"),
        ("-server", "must start with a letter or digit"),
        ("_server", "must start with a letter or digit"),
        ("sérver", "must start with a letter or digit"),
        ("server\n", "must start with a letter or digit"),
        ("server.job\n", "must start with a letter or digit"),
        ("a" * 65, "at most 64 characters"),
        (".".join(["abcdefgh"] * 40), f"longer than {MAX_LENGTH} characters"),
    ],
)
def test_invalid_names_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(InvalidFQCNError, match="invalid FQCN") as info:
        FQCN.parse(text)
    assert problem in str(info.value)
    # A cell-layer error and a ValueError both: callers may catch either.
    assert isinstance(info.value, CellError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, 42, b"server", ["server"]])
def test_non_strings_are_refused_with_their_type(value: object) -> None:
    with pytest.raises(InvalidFQCNError, match=f"expected a string, got {type(value).__name__}"):
        FQCN.parse(value)  # type: ignore[arg-type]


def test_a_long_name_is_shortened_in_the_error() -> None:
    text = "a" * 300
    with pytest.raises(InvalidFQCNError) as info:
        validate(text)
    assert info.value.fqcn == "a" * 40 + "..."


def test_child_takes_exactly_one_segment() -> None:
    server = FQCN.parse("server")
    with pytest.raises(InvalidFQCNError, match=r"contains '\.'"):
        server.child("job1.trainer")
    with pytest.raises(InvalidFQCNError, match="segment 2 is empty"):
        server.child("")
    with pytest.raises(InvalidFQCNError, match="must start with a letter or digit"):
        server.child("-x")
    with pytest.raises(InvalidFQCNError, match="must be a string, got int"):
        server.child(3)  # type: ignore[arg-type]
