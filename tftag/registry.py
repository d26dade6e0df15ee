"""A name → factory registry whose unknown-name error lists the known names."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


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

    def check(self, name: str) -> str:
        """``name`` if known; else ValueError listing the known names."""
        self.get(name)
        return name

    def get(self, name: str) -> F:
        """The factory of ``name``; an unknown name raises ValueError listing the known ones."""
        known = self.names()
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(known)}")
        return self._factories[name]
