"""Declarative option rules: one callable per option checks its value and returns what to store.

In the manner of scikit-learn's `_parameter_constraints` (`StrOptions`,
`Interval(Integral, 1, None, closed="left")`): a class lists its options in
one table of rules, and `__init__` runs the table. Each rule raises a
ValueError naming the option, its value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (qualified option name, value) -> the value to store
Rule = Callable[[str, Any], Any]


def choice(allowed: tuple[str, ...] | dict[str, Any]) -> Rule:
    """One of `allowed` (a dict's keys: the stored value is the key's entry)."""

    def check(name: str, value: Any) -> Any:
        if value not in tuple(allowed):
            raise ValueError(f"{name} is {value!r}; allowed: {', '.join(allowed)}")
        return allowed[value] if isinstance(allowed, dict) else value

    return check


def at_least(kind: type[int] | type[float], lowest: int, none: bool = False) -> Rule:
    """A number >= `lowest`, stored as `kind` (None too, if `none`)."""

    def check(name: str, value: Any) -> Any:
        if none and value is None:
            return None
        if not kind(value) >= lowest:  # `not >=`: NaN fails too
            raise ValueError(f"{name} is {value}; it must be >= {lowest}")
        return kind(value)

    return check


def as_type(kind: type) -> Rule:
    """Any value, stored as `kind`."""
    return lambda name, value: kind(value)
