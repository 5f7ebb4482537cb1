"""Small helpers every view uses: reading the controls, naming the methods, and answering bad input.

Controls arrive as whatever gradio hands over (floats for Number boxes, None for an empty one);
each value is checked here into the type the library expects, or refused with a sentence that
says what to type instead. The method lists are the library's (`minnat.nat.METHODS` for NAT,
`minnat.nat.ALL_METHODS` with the biased contrasts), so a method added there shows up in the
views' checkboxes without touching the explorer. A contrast is always named with "(biased)":
it is not NAT, and its gradient is not g_full in expectation.
"""
from __future__ import annotations

import contextlib
import html
import re
import secrets

import gradio as gr
import torch

from minnat.nat import ALL_METHODS, BIASED_METHODS, METHODS, check_budget

METHOD_NAMES = {"full": "full", "urs": "URS", "rpc": "RPC"}  # display names; other methods show their own
MAX_SEED = 2**31 - 1


# ----------------------------------------------------------------------------- methods

def method_name(method: str) -> str:
    """"URS", "RPC", "rpc-unweighted (biased)": a contrast always says it is biased."""
    name = METHOD_NAMES.get(method, method)
    return f"{name} (biased)" if method in BIASED_METHODS else name


def method_label(method: str, budget: float | None = None) -> str:
    """"URS ρ=0.5", "top-entropy ρ=0.2 (biased)"; full has no budget."""
    name = METHOD_NAMES.get(method, method)
    label = name if method == "full" or budget is None else f"{name} ρ={budget:g}"
    return f"{label} (biased)" if method in BIASED_METHODS else label


def method_choices(include_full: bool = True, include_biased: bool = False) -> list[tuple[str, str]]:
    """(label, value) pairs for a CheckboxGroup, in the library's order (the contrasts last)."""
    methods = ALL_METHODS if include_biased else METHODS
    return [(method_name(method), method) for method in methods if include_full or method != "full"]


def chosen_methods(shown, include_full: bool = True, what: str = "choose at least one method to show.",
                   methods=METHODS) -> list[str]:
    """The ticked methods among `methods`, in the library's order, or a ValueError saying what to tick."""
    chosen = [method for method in methods if method in (shown or []) and (include_full or method != "full")]
    if not chosen:
        raise ValueError(what)
    return chosen


# ----------------------------------------------------------------------------- reading controls

def whole_number(value, name: str, low: int, high: int) -> int:
    """A whole number in [low, high] from a gradio Number/Slider value, or a clear ValueError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number between {low} and {high}; got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"{name} must be a whole number between {low} and {high}; got {value!r}.")
    return int(number)


def seed_or_fresh(value, name: str) -> tuple[int, bool]:
    """(seed, fixed): the typed seed, or a fresh random one when the box is empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return secrets.randbelow(MAX_SEED + 1), False
    return whole_number(value, name, 0, MAX_SEED), True


def parse_budgets(text) -> list[float]:
    """"0.25, 0.5" -> [0.25, 0.5]; each ρ must lie in (0, 1]."""
    pieces = [piece for piece in re.split(r"[,\s;]+", str(text or "").strip()) if piece]
    if not pieces:
        raise ValueError("give at least one budget ρ, e.g. 0.25, 0.5.")
    budgets = []
    for piece in pieces:
        try:
            budgets.append(check_budget(float(piece)))
        except ValueError:
            raise ValueError(f"budget ρ must be in (0, 1] (the expected fraction of tokens kept); got {piece!r}. "
                             "Write budgets like 0.25, 0.5.") from None
    return sorted(set(budgets))


# ----------------------------------------------------------------------------- numbers and words

def significant(value, digits: int = 7) -> float:
    """A float rounded to `digits` significant digits, for compact JSON and tables (tiny π stay non-zero)."""
    return float(f"{float(value):.{digits}g}")


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """"1 group", "3 groups"."""
    return f"{number} {noun if number == 1 else (plural or noun + 's')}"


@contextlib.contextmanager
def seeded(seed: int):
    """Sample with a fixed seed, then put torch's global random state back as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


# ----------------------------------------------------------------------------- messages in the page

def error_box(message: str) -> str:
    """A readable error for the page (Markdown), shown next to the controls that caused it."""
    return f"<div class='nat-error'>⚠️ {html.escape(str(message))}</div>"


def note_box(message: str) -> str:
    return f"<div class='nat-note'>{message}</div>"


def show_error(message) -> str:
    """Toast the error and return the box for the view's status area."""
    gr.Warning(str(message))
    return error_box(message)
