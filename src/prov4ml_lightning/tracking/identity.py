"""The responsible person and organisation of a run: checked and normalised from the front doors'
arguments (``person_name``, ``person_email``, ``person_orcid``, ``organization``) or, where an
argument is ``None``, from the environment (``PROV4ML_PERSON_NAME``, ``PROV4ML_PERSON_EMAIL``,
``PROV4ML_PERSON_ORCID``, ``PROV4ML_ORGANIZATION``). The PROV builder records them as a
``prov:Person`` and a ``prov:Organization`` (docs/provenance-model.md, "Agents").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from prov4ml_lightning.errors import Prov4MLInputError

__all__ = ["IDENTITY_ENV", "check_email", "check_orcid", "resolve_identity"]

#: RunConfig field -> the environment variable read when the argument is ``None``
IDENTITY_ENV = {
    "person_name": "PROV4ML_PERSON_NAME",
    "person_email": "PROV4ML_PERSON_EMAIL",
    "person_orcid": "PROV4ML_PERSON_ORCID",
    "organization": "PROV4ML_ORGANIZATION",
}

_ORCID = re.compile(r"(?:https?://orcid\.org/|orcid:)?(\d{4}-\d{4}-\d{4}-\d{3}[\dX])", re.IGNORECASE)
# one @, no spaces, a dot in the domain: what an address needs to be a mailto: IRI someone can use
_EMAIL = re.compile(r"[^@\s<>()\[\]\\,;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)+")


def check_orcid(value: str, where: str) -> str:
    """``value`` (``0000-0002-1825-0097``, ``https://orcid.org/0000-...`` or ``orcid:0000-...``) as
    its canonical IRI ``https://orcid.org/0000-0002-1825-0097``, its check digit verified
    (ISO 7064 MOD 11-2, as ORCID defines it).

    Raises:
        Prov4MLInputError: not an ORCID iD; the message starts with ``where``.
    """
    match = _ORCID.fullmatch(value.strip())
    if match is None:
        raise Prov4MLInputError(f"{where} must be an ORCID iD such as 'https://orcid.org/0000-0002-1825-0097' "
                                f"or '0000-0002-1825-0097', got {value!r}")
    digits = match.group(1).upper().replace("-", "")
    total = 0
    for d in digits[:-1]:
        total = (total + int(d)) * 2
    check = (12 - total % 11) % 11
    if digits[-1] != ("X" if check == 10 else str(check)):
        raise Prov4MLInputError(f"{where}: {value!r} is not a valid ORCID iD (its check digit should be "
                                f"{'X' if check == 10 else check}; a typo?)")
    return "https://orcid.org/" + "-".join(digits[i:i + 4] for i in range(0, 16, 4))


def check_email(value: str, where: str) -> str:
    """``value`` (``ada@example.org`` or ``mailto:ada@example.org``) as the bare address.

    Raises:
        Prov4MLInputError: not an e-mail address; the message starts with ``where``.
    """
    address = value.strip()
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:"):]
    if not _EMAIL.fullmatch(address):
        raise Prov4MLInputError(f"{where} must be an e-mail address such as 'ada@example.org', got {value!r}")
    return address


def _check_name(value: str, where: str) -> str:
    name = value.strip()
    if not name or len(name) > 500 or any(ord(c) < 32 for c in name):
        raise Prov4MLInputError(f"{where} must be a non-empty name of one line (at most 500 characters), "
                                f"got {value!r}")
    return name


_CHECKS = {"person_name": _check_name, "person_email": check_email, "person_orcid": check_orcid,
           "organization": _check_name}


def resolve_identity(given: Mapping[str, object], call: str,
                     environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The four identity options, each from ``given`` or else its environment variable, checked
    and normalised (an ORCID as its IRI, an e-mail without ``mailto:``); ``None`` where neither
    says anything (an empty variable counts as unset).

    Raises:
        Prov4MLInputError: a value is not a string or not usable; names ``call`` and the argument,
            or the environment variable it came from.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str | None] = {}
    for field, var in IDENTITY_ENV.items():
        value = given.get(field)
        where = f"{call}: {field}"
        if value is None:
            value = env.get(var) or None
            where = f"{call}: the environment variable {var}"
        if value is not None and not isinstance(value, str):
            raise Prov4MLInputError(f"{where} must be a string or None, got {type(value).__name__}")
        out[field] = None if value is None else _CHECKS[field](value, where)
    return out
