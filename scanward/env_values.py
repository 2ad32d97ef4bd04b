"""Reading typed values from ``SCANWARD_*`` variables: each reader returns the value or
raises :class:`ConfigError` with one line naming the variable, what it holds and the
form expected, so the worker and the CLI can print it and exit 1 (no traceback).

An unset or empty variable means its default everywhere, as before."""

from __future__ import annotations

import errno
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Kubernetes object names (DNS-1123 subdomain) and label syntax, as the API server checks
# them: a value that breaks these would only fail later, at the first Job's create.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(?=.{0,63}$)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SHOWN = 80  # characters of a bad value quoted in the message: enough to recognise it


class ConfigError(ValueError):
    """A configuration value that cannot work; the message is one line that names the
    variable and the form it expects."""


def bad(name: str, raw: str, expected: str) -> ConfigError:
    """``NAME='value': expected <form>`` (the value shortened, on one line)."""
    shown = raw if len(raw) <= _SHOWN else raw[:_SHOWN] + "…"
    return ConfigError(f"{name}={shown!r}: expected {expected}")


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    if lo is not None:
        return f" >= {lo:g}"
    return f" <= {hi:g}" if hi is not None else ""


def env_int(env: Mapping[str, str], name: str, default: int, *, min: int | None = None,
            max: int | None = None, what: str = "an integer") -> int:
    """An integer within ``[min, max]``; ``default`` when unset."""
    value = env_optional_int(env, name, min=min, max=max, what=what)
    return default if value is None else value


def env_optional_int(env: Mapping[str, str], name: str, *, min: int | None = None,
                     max: int | None = None, what: str = "an integer") -> int | None:
    """An integer within ``[min, max]``, or None when unset."""
    raw = _raw(env, name)
    if raw is None:
        return None
    expected = what + _bounds(min, max)
    try:
        value = int(raw, 10)
    except ValueError:
        raise bad(name, raw, expected) from None
    if (min is not None and value < min) or (max is not None and value > max):
        raise bad(name, raw, expected)
    return value


def env_port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port to listen on, or None (off) when unset."""
    return env_optional_int(env, name, min=1, max=65535, what="a TCP port")


def port_unavailable(name: str, port: int, error: OSError | str) -> ConfigError:
    """``NAME='port': port N is in use``, or why else nothing can listen on it: for a
    port read with :func:`env_port` that the process then fails to bind. ``error`` is
    the bind's OSError, or the text of one reported by other code (Temporal's Rust
    metrics exporter: ``... Address already in use (os error 98)``)."""
    if isinstance(error, OSError):
        in_use = error.errno == errno.EADDRINUSE
        reason = error.strerror or str(error)
    else:
        in_use = "Address already in use" in error or f"os error {errno.EADDRINUSE})" in error
        reason = error.rpartition(": ")[2] or error
    why = f"port {port} is in use" if in_use else f"cannot listen on port {port}: {reason}"
    return ConfigError(f"{name}={str(port)!r}: {' '.join(why.split())}")


def env_float(env: Mapping[str, str], name: str, default: float, *, min: float = 0.0,
              positive: bool = False, what: str = "a number of seconds") -> float:
    """A finite number ≥ ``min`` (> 0 when ``positive``); ``default`` when unset."""
    raw = _raw(env, name)
    if raw is None:
        return default
    expected = what + (" > 0" if positive else _bounds(min, None))
    try:
        value = float(raw)
    except ValueError:
        raise bad(name, raw, expected) from None
    if not math.isfinite(value) or value < min or (positive and value <= 0):
        raise bad(name, raw, expected)
    return value


def env_flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """On/off: ``1 true yes on`` or ``0 false no off`` (any case)."""
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise bad(name, raw, "1/true/yes/on or 0/false/no/off")


def env_choice(env: Mapping[str, str], name: str, default: str,
               choices: Iterable[str]) -> str:
    """One of ``choices`` (exactly as spelled there)."""
    allowed = tuple(choices)
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw not in allowed:
        raise bad(name, raw, "one of " + ", ".join(allowed))
    return raw


def env_json_list(env: Mapping[str, str], name: str, *,
                  example: str = '[{"key": "value"}]') -> list[dict[str, Any]]:
    """A JSON list of objects; ``[]`` when unset."""
    raw = _raw(env, name)
    if raw is None:
        return []
    expected = f"a JSON list of objects, like {example}"
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise bad(name, raw, f"{expected} (invalid JSON: {e})") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise bad(name, raw, expected)
    return value


def env_mapping(env: Mapping[str, str], name: str) -> dict[str, str]:
    """``key=value,key=value`` pairs with Kubernetes label syntax; ``{}`` when unset."""
    raw = _raw(env, name)
    if raw is None:
        return {}
    expected = ("comma-separated key=value pairs of label syntax, like "
                "disktype=ssd,kubernetes.io/arch=amd64")
    pairs: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _label_key(key) or not _LABEL_VALUE.fullmatch(value):
            raise bad(name, raw, expected)
        pairs[key] = value
    return pairs


def env_names(env: Mapping[str, str], name: str, *, dns_label: bool = False) -> tuple[str, ...]:
    """Comma-separated Kubernetes object names; ``()`` when unset."""
    raw = _raw(env, name)
    if raw is None:
        return ()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if not all(_k8s_name(n, dns_label) for n in names):
        raise bad(name, raw, "comma-separated " + _name_form(dns_label, plural=True))
    return names


def env_k8s_name(env: Mapping[str, str], name: str, default: str, *,
                 dns_label: bool = False) -> str:
    """One Kubernetes object name (a namespace is a DNS label, most others a DNS
    subdomain); ``default`` when unset."""
    raw = _raw(env, name)
    if raw is None:
        return default
    if not _k8s_name(raw, dns_label):
        raise bad(name, raw, _name_form(dns_label))
    return raw


def _k8s_name(value: str, dns_label: bool) -> bool:
    return bool((_DNS_LABEL if dns_label else _DNS_SUBDOMAIN).fullmatch(value))


def _name_form(dns_label: bool, *, plural: bool = False) -> str:
    if dns_label:
        what, chars = "DNS label", "lowercase letters, digits and '-', at most 63"
    else:
        what, chars = "Kubernetes name", "lowercase letters, digits, '-' and '.'"
    return f"{what}s ({chars})" if plural else f"a {what} ({chars})"


def _label_key(key: str) -> bool:
    prefix, slash, label = key.rpartition("/")
    return bool(_LABEL_NAME.fullmatch(label)) and (
        not slash or bool(_DNS_SUBDOMAIN.fullmatch(prefix)))
