"""Pydantic's validation errors told as one line in the scenario's own words.

The key path of the first problem, what is wrong with it (a number, a mapping, a schedule
entry, in plain terms), what is allowed there, and the closest allowed key to a misspelt one.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError


def suggest(word: str, keys: Any) -> str:
    """' (did you mean ...?)' for the closest to ``word`` of a mapping's keys or a list of names; else ''."""
    if isinstance(keys, dict):
        keys = [str(key) for key in keys]
    elif not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
        return ""
    close = difflib.get_close_matches(word, keys, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _allowed_keys(model: type[BaseModel], location: tuple) -> list[str]:
    """The keys the model at ``location`` accepts (for 'did you mean')."""
    current = model
    parts = [part for part in location[:-1] if not isinstance(part, int)]
    index = 0
    while index < len(parts):
        field = current.model_fields.get(str(parts[index]))
        if field is None:
            return []
        current, keyed = _model_in(field.annotation)
        if current is None:
            return []
        index += 2 if keyed else 1  # a dict of models is followed by a free name
    return list(current.model_fields)


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside an annotation, and whether it sits in a dict (named entries)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    arguments = get_args(annotation)
    if get_origin(annotation) is dict and arguments:
        model, _ = _model_in(arguments[1])
        return model, model is not None
    for argument in arguments:
        model, keyed = _model_in(argument)
        if model is not None:
            return model, keyed
    return None, False


# pydantic's wording for the commonest problems, said in the scenario's terms
PLAIN_MESSAGES = {
    "float_type": "should be a number",
    "float_parsing": "should be a number",
    "int_type": "should be a whole number",
    "int_parsing": "should be a whole number",
    "int_from_float": "should be a whole number",
    "list_type": "should be a list",
    "tuple_type": "should be a list",
    "dict_type": "should be a mapping of keys",
    "model_type": "should be a mapping of keys",
    "missing": "required key missing",
}
TEMPERATURE_FORMS = (
    "a temperature is a number >= 0, {schedule: [[round, T], ...]} or {distribution: lognormal, gamma or uniform, ...}"
)


def describe_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """The first problem of a pydantic error as one line: key path, what is wrong, what is allowed."""
    first = error.errors()[0]
    location = tuple(part for part in first["loc"] if not _is_union_tag(part))
    key_path = ".".join(str(part) for part in location)
    where = f"{key_path}: " if key_path else ""
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, location)
        return f"{where}unknown key{suggest(str(location[-1]), allowed)}; allowed keys: {', '.join(allowed)}"
    message = PLAIN_MESSAGES.get(kind, first["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    inner = re.match(r"([A-Za-z_][\w.]*): ", message)  # a model's check naming one of its own keys
    if inner and location and inner.group(1).split(".")[0] in _allowed_keys(model, (*location, None)):
        where, message = f"{key_path}.{inner.group(1)}: ", message[inner.end() :]
    if "float" in first["loc"] and location[-1:] == ("temperature",):  # neither number, schedule nor distribution
        message = TEMPERATURE_FORMS
    elif kind == "model_type":
        allowed = _allowed_keys(model, (*location, None))
        message += f" ({', '.join(allowed)})" if allowed else ""
    elif len(location) >= 2 and location[-2] == "schedule" and kind in ("too_long", "too_short"):
        message = "each schedule entry is a [round, temperature] pair"
    elif len(location) >= 3 and location[-3] == "schedule":
        message += f" (entry {location[-2]} is [round, temperature])"
    given = first.get("input")
    shown = "" if kind == "missing" or isinstance(given, dict) else f" (got {given!r})"
    return f"{where}{message}{shown}"


def _is_union_tag(part: Any) -> bool:
    tags = ("float", "TemperatureSchedule", "TemperatureDistribution", "constrained-float", "int")
    return isinstance(part, str) and (part in tags or part.startswith(("function-", "constrained")))
