import pytest

from dyve.registry import Registry


def test_add_get_and_order() -> None:
    r: Registry[int] = Registry("thing")
    r.add("b", 2)
    r.add("a", 1)
    assert r.get("a") == 1
    assert r.names() == ["b", "a"]
    assert "a" in r
    assert len(r) == 2


def test_unknown_name_lists_known_names() -> None:
    r: Registry[int] = Registry("thing")
    r.add("alpha", 1)
    with pytest.raises(KeyError, match="unknown thing 'beta'; known: alpha"):
        r.get("beta")


def test_no_silent_overwrite() -> None:
    r: Registry[int] = Registry("thing")
    r.add("a", 1)
    with pytest.raises(KeyError, match="already registered"):
        r.add("a", 2)
    r.add("a", 3, replace=True)
    assert r.get("a") == 3


def test_decorator() -> None:
    r: Registry[object] = Registry("fn")

    @r.register("f")
    def f() -> int:
        return 1

    assert r.get("f") is f
