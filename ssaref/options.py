"""A learning rule's declared options and the history of their defaults: the one default mechanism.

A rule declares ``OPTIONS = {name: Option(type, default, help, before=..., added=...)}`` (a plain
``(type, default, help)`` tuple is an option without history).  ``before = {"X.Y.Z": value}`` says the default was
``value`` in every version before X.Y.Z; ``added = "X.Y.Z"`` says the option appeared in X.Y.Z (what ran before is
its default as of 0.1.0).  Everything version-dependent is derived from these declarations:

* :func:`defaults` -- the defaults as of a version: a run file written by that version left unset options out, so a
  resume (``ssaref.config``) continues with them, not with today's;
* a rule's ``DEFAULTS_OF`` -- ``{(option, value): "X.Y.Z"}``: when ``option`` is ``value`` (SSA's ``ssa_variant
  paper``), unset options take the defaults of version X.Y.Z (:func:`resolve`);
* :func:`first_defaults` -- the behaviour of ssaref 0.1.0 for the options added since, which a golden file of
  schema 1 describes by leaving them out (``SVDRule.resolved_options``).

This module is a leaf (it imports nothing of ssaref): ``rules/base.py`` and ``ssaref.config`` both use it.
"""

from __future__ import annotations

__all__ = [
    "Option",
    "coerce",
    "version_tuple",
    "defaults",
    "earlier_defaults",
    "first_defaults",
    "resolve",
    "FIRST_VERSION",
]

#: the first released version; a run file that names no version was written by it
FIRST_VERSION = "0.1.0"


class Option(tuple):
    """One declared option: the tuple ``(type, default, help)`` with its default history ``before`` and the version
    it was ``added`` in (both optional, see the module docstring)."""

    before: dict
    added: str | None

    def __new__(cls, type_, default, help_, *, before=None, added=None):
        self = super().__new__(cls, (type_, default, help_))
        self.before = dict(before or {})
        self.added = added
        return self

    def __getnewargs_ex__(self):
        return (tuple(self), {"before": self.before, "added": self.added})


def coerce(typ, v):
    """Convert a flag, TOML or run-file value to the option's type ('true'/'false' and the like for bools)."""
    if v is None:
        return None
    if typ is bool and isinstance(v, str):
        low = v.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ValueError(v)
        return low in ("true", "1", "yes", "on")
    if typ is str and not isinstance(v, str):
        raise ValueError(v)
    return typ(v)


def version_tuple(text) -> tuple:
    """``"0.2.0"`` -> ``(0, 2, 0)``; text that is no version -> ``(0,)`` (older than any)."""
    try:
        return tuple(int(part) for part in str(text).split(".")[:3])
    except ValueError:
        return (0,)


def _history(spec) -> dict:
    return getattr(spec, "before", {})


def default_as_of(spec, version=None):
    """The default of one option (``spec``) in ``version`` (None: today): the value before the first change after
    ``version``."""
    if version is None:
        return spec[1]
    written = version_tuple(version)
    for v, value in sorted(_history(spec).items(), key=lambda kv: version_tuple(kv[0])):
        if written < version_tuple(v):
            return value
    return spec[1]


def defaults(options: dict, version=None) -> dict:
    """Every option's default in ``version`` (None: today's)."""
    return {k: default_as_of(spec, version) for k, spec in options.items()}


def earlier_defaults(options: dict, version) -> dict:
    """The options whose default in ``version`` is not today's (a changed default), with that value."""
    return {
        k: default_as_of(spec, version)
        for k, spec in options.items()
        if any(version_tuple(version) < version_tuple(v) for v in _history(spec))
    }


def first_defaults(options: dict) -> dict:
    """The options added after the first version, with what ran before they existed (their 0.1.0 default)."""
    return {k: default_as_of(spec, FIRST_VERSION) for k, spec in options.items() if getattr(spec, "added", None)}


def resolve(options: dict, given: dict, *, version=None, defaults_of=None) -> dict:
    """The full options of a rule: ``given`` over the defaults of ``version`` (None: today), or over those of the
    earlier version a ``defaults_of`` entry ``{(option, value): version}`` names when ``option`` takes ``value``."""
    for (name, value), v in (defaults_of or {}).items():
        if str(given.get(name, options[name][1])) == value and (
            version is None or version_tuple(v) < version_tuple(version)
        ):
            version = v
    return {**defaults(options, version), **given}
