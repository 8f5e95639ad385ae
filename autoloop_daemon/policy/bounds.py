"""The bounds of every number an operator sends through the control API or `ctl`.

Pure checks, no I/O. A value outside its bound is refused (ValueError naming the field)
before anything changes, so the state never holds a number it cannot save: NaN, an
infinity, or a sum of two extensions that overflows. docs/design.md ("Control API") states
the same bounds; they match the configuration's own (`Count`, `Money` in config/settings.py).
"""

from __future__ import annotations

import math

MAX_EXTEND_ITERATIONS = 1_000_000
"""At most this many iterations per `extend`, and in total over a target's extensions."""

MAX_EXTEND_COST_USD = 1e9
"""At most this many USD per `extend`, and in total over a target's extensions."""


def whole_number(field: str, value: object, upper: int) -> int:
    """`value` as an int in [0, upper]; ValueError naming `field` otherwise (a bool, a float,
    a string or anything out of range)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be a whole number, got {_shown(value)}")
    if not 0 <= value <= upper:
        raise ValueError(f"{field} must be between 0 and {upper}, got {_shown(value)}")
    return value


def amount(field: str, value: object, upper: float) -> float:
    """`value` as a finite float in [0, upper]; ValueError naming `field` otherwise (NaN,
    an infinity, a bool, a string or anything out of range)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{field} must be a number, got {_shown(value)}")
    number = float(value) if not isinstance(value, int) or abs(value) < 2**63 else math.inf
    if not math.isfinite(number) or not 0 <= number <= upper:
        raise ValueError(f"{field} must be a finite number between 0 and {upper:g}, got "
                         f"{_shown(value)}")  # fmt: skip
    return number


def check_extension(
    iterations: object, cost_usd: object, extra_iterations: int, extra_cost_usd: float
) -> tuple[int, float]:
    """The (iterations, cost_usd) of one `extend`, each within its bound and with the target's
    extensions so far (`extra_*`) still within it after adding; ValueError naming the field."""
    n = whole_number("iterations", iterations, MAX_EXTEND_ITERATIONS)
    usd = amount("cost_usd", cost_usd, MAX_EXTEND_COST_USD)
    if extra_iterations + n > MAX_EXTEND_ITERATIONS:
        raise ValueError(
            f"iterations: the target's extensions would total {extra_iterations + n}, "
            f"over the bound of {MAX_EXTEND_ITERATIONS}"
        )
    if extra_cost_usd + usd > MAX_EXTEND_COST_USD:
        raise ValueError(
            f"cost_usd: the target's extensions would total ${extra_cost_usd + usd:,.2f}, "
            f"over the bound of ${MAX_EXTEND_COST_USD:,.0f}"
        )
    return n, usd


def _shown(value: object) -> str:
    """`value` for an error message, cut short (a 4,000-digit number stays one short line)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (sys.get_int_max_str_digits)
        return "a number too long to print"
    return text if len(text) <= 40 else text[:37] + "..."
