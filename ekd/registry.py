"""The one registry helper behind backbones, heads, objectives, auxiliary losses and data sources.

A :class:`Registry` maps names to factories (classes or functions). Every registry in ekd is one
instance of it, so they all behave alike:

- ``@REGISTRY.register("name")`` adds a factory; registering a name twice is an error. A name ending
  in ``/*`` registers a family: ``"timm/*"`` serves ``timm/resnet18`` by calling the factory with the
  part after the prefix as its first argument.
- ``REGISTRY.get(name)`` returns the factory; an unknown name raises :class:`UnknownNameError`
  listing the known names.
- ``REGISTRY.create(name, *args, **options)`` checks ``options`` against the factory's signature
  before calling it; an option it does not take raises :class:`UnknownOptionError` listing the
  options it does take.

Both errors subclass ``ValueError`` (a bad configuration value); :class:`UnknownOptionError` is also a
``TypeError``, what Python itself raises for an unexpected keyword argument.

Tests that need a throw-away entry use ``with REGISTRY.registered("test-name", factory): ...``, which
removes it again on exit (registry-driven tests must not see it afterwards).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class RegistryError(ValueError):
    """A registry was asked for something it cannot give."""


class UnknownNameError(RegistryError):
    """No factory is registered under the requested name."""


class UnknownOptionError(RegistryError, TypeError):
    """A factory was given an option (keyword argument) it does not take."""


def natural_key(name: str) -> list[object]:
    """Sort key that orders iresnet18 < iresnet34 < iresnet100 (digits compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def accepted_options(factory: Callable[..., Any], skip: int = 0) -> list[str]:
    """Keyword options ``factory`` takes (``self`` and the first ``skip`` named parameters left out)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    names = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]
    return names[skip:]


def takes_any_option(factory: Callable[..., Any]) -> bool:
    """True when ``factory`` has a ``**kwargs`` parameter (its options cannot be checked by name)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


class Registry(Generic[T]):
    """Named factories of one kind (``kind`` names it in error messages, e.g. "backbone")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._families: dict[str, T] = {}  # "timm/" -> factory taking the model name first

    # ------------------------------------------------------------------------------- registration
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding a factory under ``name`` (``prefix/*`` registers a family)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise RegistryError(f"{self.kind} name must be a non-empty string without spaces, got {name!r}")

        def decorator(factory: T) -> T:
            if name.endswith("/*"):
                prefix = name[:-1]
                if prefix in self._families:
                    raise RegistryError(f"{self.kind} family {name!r} is already registered")
                self._families[prefix] = factory
            else:
                if name in self._entries:
                    raise RegistryError(f"{self.kind} {name!r} is already registered")
                self._entries[name] = factory
            return factory

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and interactive sessions that re-register a name)."""
        if name.endswith("/*"):
            self._families.pop(name[:-1], None)
        else:
            self._entries.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, factory: T) -> Iterator[T]:
        """Context manager: ``factory`` is registered as ``name`` inside the block only."""
        self.register(name)(factory)
        try:
            yield factory
        finally:
            self.unregister(name)

    # ------------------------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        """Registered names (families excluded) in natural order."""
        return sorted(self._entries, key=natural_key)

    def families(self) -> list[str]:
        """Registered families written as ``"<prefix>*"``."""
        return sorted(f"{prefix}*" for prefix in self._families)

    def __contains__(self, name: object) -> bool:
        try:
            self.resolve(name)  # type: ignore[arg-type]
        except RegistryError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def known_text(self) -> str:
        """The known names for an error message (families as ``prefix<model_name>``)."""
        text = ", ".join(self.names()) or "(none)"
        if self._families:
            text += "; families: " + ", ".join(f"{p}<model_name>" for p in sorted(self._families))
        return text

    def resolve(self, name: str) -> tuple[T, tuple[str, ...]]:
        """``(factory, leading positional args)``: ``()`` for a plain name, ``(model_name,)`` for a family."""
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.kind} name must be a string, got {type(name).__name__}: {name!r}")
        if name in self._entries:
            return self._entries[name], ()
        # longest prefix first, so that a nested family ("timm/hf/*") wins over its parent ("timm/*")
        for prefix in sorted(self._families, key=len, reverse=True):
            factory = self._families[prefix]
            if name.startswith(prefix):
                rest = name[len(prefix) :]
                if not rest:
                    raise UnknownNameError(f"{self.kind} {name!r} names no model: write {prefix}<model_name>")
                return factory, (rest,)
        raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {self.known_text()}")

    def get(self, name: str) -> T:
        """The factory registered as ``name`` (a family's factory for ``prefix/<model>``)."""
        return self.resolve(name)[0]

    # ---------------------------------------------------------------------------------- building
    def check_options(self, name: str, options: dict[str, Any], skip: int = 0) -> None:
        """Raise :class:`UnknownOptionError` when ``name``'s factory does not take every key of ``options``.

        ``skip``: leading named parameters filled by the caller positionally (not options).
        """
        factory, args = self.resolve(name)
        if takes_any_option(factory):
            return
        accepted = accepted_options(factory, skip=skip + len(args))
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise UnknownOptionError(
                f"{self.kind} {name!r} got options {unknown} it cannot take: {name!r} has no "
                f"hyper-parameter {', '.join(map(repr, unknown))}; "
                f"it accepts: {', '.join(accepted) or '(none)'}"
            )

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        """``factory(*args, **options)`` after :meth:`check_options`; ``args`` are the caller's
        positional arguments (e.g. a head's embedding size and class count)."""
        factory, leading = self.resolve(name)
        self.check_options(name, options, skip=len(args))
        return factory(*leading, *args, **options)
