"""A name → factory registry whose unknown-name error lists the known names."""

from __future__ import annotations

from typing import Callable, Generic, Sequence, TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(ValueError):
    """Names a registry does not know.

    Attributes:
      kind: what the names are ("model", "catalog", ...).
      names: the unknown names.
      known: the registry's names.
      field: the config field that held them (e.g. ``mel_dtype``), if the checker said: an
        entry point maps it to its flag (:func:`tftag.cli.config`).
    """

    def __init__(self, kind: str, names: Sequence[str], known: Sequence[str],
                 field: str | None = None):
        self.kind, self.names, self.known, self.field = kind, tuple(names), tuple(known), field
        shown = repr(self.names[0]) if len(self.names) == 1 else str(list(self.names))
        super().__init__(f"unknown {kind} {shown}; known: {', '.join(self.known)}")


def _origin(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class Registry(Generic[F]):
    """Factories by name, loaded lazily.

    Args:
      kind: what the names are, for error messages ("model", "catalog").
      load_builtin: imports the modules whose decorators fill the registry.
    """

    def __init__(self, kind: str, load_builtin: Callable[[], None]):
        self.kind = kind
        self._load_builtin = load_builtin
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding a factory under ``name``; a name taken by another factory is an error.

        (Re-registering the same function, as a module reload does, is allowed.)
        """

        def wrap(fn: F) -> F:
            old = self._factories.get(name)
            if old is not None and _origin(old) != _origin(fn):
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {_origin(old)} and "
                                 f"by {_origin(fn)}")
            self._factories[name] = fn
            return fn

        return wrap

    def names(self) -> list[str]:
        """Known names, sorted."""
        self._load_builtin()
        return sorted(self._factories)

    def check(self, name: str, field: str | None = None) -> str:
        """``name`` if known; else :class:`UnknownNameError` (a ValueError listing the known
        names; ``field``: the config field that held it)."""
        self.check_all((name,), field)
        return name

    def check_all(self, names: Sequence[str], field: str | None = None) -> tuple[str, ...]:
        """``names`` if every one is known; else :class:`UnknownNameError` naming all unknown."""
        known = self.names()
        unknown = [n for n in names if n not in self._factories]
        if unknown:
            raise UnknownNameError(self.kind, unknown, known, field)
        return tuple(names)

    def get(self, name: str) -> F:
        """The factory of ``name``; an unknown name raises ValueError listing the known ones."""
        self.check_all((name,))
        return self._factories[name]
