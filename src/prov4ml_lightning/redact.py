"""The one redactor: decides what is a secret for every recorded URL, argument and variable,
and for the tracking URI the MLflow sink shows in messages and ``prov4ml sync`` matches.

A leaf: it imports nothing of the package, so the sinks (below the core) and ``capture/`` (a
plug-in) share it.

Rules (documented in ``docs/provenance-model.md``):

- A *name* is secret when, upper-cased, it contains ``TOKEN``, ``KEY``, ``SECRET``,
  ``PASSWORD``, ``PASSWD``, ``CREDENTIAL``, ``AUTH`` or ``SIGNATURE`` (``AWS_SECRET_ACCESS_KEY``,
  ``HF_TOKEN``, ``--api-key``, ``MLFLOW_TRACKING_PASSWORD``). Its value becomes ``***``.
- A *URL* loses the user-info part (``https://user:token@host`` -> ``https://***@host``;
  ``ssh://git@host`` keeps ``git``, a login name and no credential) and the values of query
  parameters with secret names (``?sig=...&token=...``).
- A command-line argument ``--name=value`` or ``--name value`` with a secret name has its value
  redacted; every other argument still has URLs inside it redacted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "is_secret_name", "redact_argv", "redact_env", "redact_source", "redact_text", "redact_url"]

REDACTED = "***"
_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH", "SIGNATURE")
_SECRET_QUERY = {"SIG", "PWD", "PASS", "ACCESS_TOKEN", "CODE"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def is_secret_name(name: str) -> bool:
    """``True`` when a variable, option or query parameter named ``name`` likely holds a secret."""
    upper = name.upper().lstrip("-")
    return any(word in upper for word in _SECRET_WORDS) or upper.replace("-", "_") in _SECRET_QUERY


def redact_url(url: str) -> str:
    """``url`` without credentials: user-info and secret query values become ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        keep = parts.scheme in ("ssh", "git+ssh") and ":" not in userinfo  # a login name, not a secret
        netloc = f"{userinfo if keep else REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs], safe="*/:")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """``text`` with every URL inside it redacted."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text) if "://" in text else text


#: ``NAME = "value"`` / ``NAME: 'value'`` / ``"NAME": "value"`` with a quoted literal value
_ASSIGNED = re.compile(r"""(?P<head>["']?(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)["']?\s*"""
                       r"""(?::\s*[A-Za-z_][\w\[\], .|]*?\s*)?(?::|=|:=)\s*[rbuRBU]{0,2})"""
                       r"""(?P<q>["'])(?P<value>[^"'\n]*)(?P=q)""")


def redact_source(text: str) -> str:
    """Source text with secrets redacted: credentials in URLs, and quoted literals assigned to a
    secret-looking name (``API_KEY = "..."``, ``"token": "..."``) become ``***``."""
    def hide(match: re.Match[str]) -> str:
        if not is_secret_name(match["name"]) or not match["value"]:
            return match.group(0)
        return f"{match['head']}{match['q']}{REDACTED}{match['q']}"

    return _ASSIGNED.sub(hide, redact_text(text))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret-named options and the credentials in URLs redacted."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        if eq and is_secret_name(name):
            out.append(f"{name}={REDACTED}")
        elif arg.startswith("-") and not eq and is_secret_name(arg):
            out.append(arg)
            hide_next = True  # "--token abc": the next word is the value
        else:
            out.append(redact_text(arg))
    return out


def redact_env(env: Mapping[str, str], names: Iterable[str] | None = None) -> dict[str, str]:
    """The variables of ``env`` (only ``names``, when given) with secret values replaced by ``***``."""
    keys = env.keys() if names is None else [n for n in names if n in env]
    return {k: REDACTED if is_secret_name(k) else redact_text(env[k]) for k in keys}
