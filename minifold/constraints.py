"""What a setting may be: the constraint kinds of minifold.validation's CONSTRAINTS table.

In the manner of scikit-learn's `Interval(Integral, 1, None, closed="left")` and
`StrOptions({...})`: each kind says whether a value is allowed (`problem` returns
None, or what is allowed) and describes what it allows, for the error message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Protocol


class Constraint(Protocol):
    """What CONSTRAINTS maps each setting to."""

    def problem(self, value: Any) -> str | None:
        """None if `value` is allowed, else what is allowed (`describe()`)."""

    def describe(self) -> str:
        """What the constraint allows, in words: `an integer >= 1 (or null)`."""


@dataclass(frozen=True)
class Integer:
    """An int (not a bool, not 2.5, not "3") in [low, high]; `extra` values are also allowed."""

    low: int | None = None
    high: int | None = None
    none: bool = False
    extra: tuple[int, ...] = ()

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.none else self.describe()
        if isinstance(value, bool) or not isinstance(value, Integral):
            return self.describe()
        number = int(value)
        if number in self.extra:
            return None
        if (self.low is not None and number < self.low) or (
            self.high is not None and number > self.high
        ):
            return self.describe()
        return None

    def describe(self) -> str:
        text = "an integer"
        if self.low is not None and self.high is not None:
            text += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            text += f" >= {self.low}"
        if self.extra:
            text += " or " + " or ".join(str(v) for v in self.extra)
        return text + (" (or null)" if self.none else "")


@dataclass(frozen=True)
class Number:
    """A finite real number (ints count) in [low, high], either end open if asked."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.none else self.describe()
        if isinstance(value, bool) or not isinstance(value, Real):
            return self.describe()
        number = float(value)
        if not math.isfinite(number):
            return self.describe()
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return self.describe()
        if self.high is not None and (
            number >= self.high if self.high_open else number > self.high
        ):
            return self.describe()
        return None

    def describe(self) -> str:
        text = "a finite number"
        if self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            text += (" and" if self.low is not None else "") + (
                f" {'<' if self.high_open else '<='} {self.high}"
            )
        return text + (" (or null)" if self.none else "")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple
    none: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None and self.none:
            return None
        return None if value in self.values else self.describe()

    def describe(self) -> str:
        return f"one of {list(self.values)}" + (" (or null)" if self.none else "")


@dataclass(frozen=True)
class Boolean:
    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else self.describe()

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Letters:
    """A non-empty string of distinct characters (an alphabet)."""

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str) or not value or len(set(value)) != len(value):
            return self.describe()
        return None

    def describe(self) -> str:
        return "a non-empty string of distinct letters, e.g. abcdefgh"


@dataclass(frozen=True)
class Batches:
    """Lightning's batch limits: a count (int >= low) or a fraction in (0, 1]."""

    low: int = 1

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or value is None:
            return self.describe()
        if isinstance(value, Integral):
            return None if int(value) >= self.low else self.describe()
        if isinstance(value, Real) and math.isfinite(float(value)) and 0 < float(value) <= 1:
            return None
        return self.describe()

    def describe(self) -> str:
        return f"a number of batches (an integer >= {self.low}) or a fraction in (0, 1]"


SIZE = Integer(1)
COUNT = Integer(0)
POSITIVE = Number(0, low_open=True)
NON_NEGATIVE = Number(0)
