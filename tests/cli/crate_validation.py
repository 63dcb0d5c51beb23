"""roc-validator (the RO-Crate validator of the RO-Crate community, package ``roc-validator``) run
offline on a crate, against the Process Run Crate 0.5 profile and RO-Crate 1.1 beneath it.

The validator expands the crate's JSON-LD with the contexts it names, fetched over HTTP through a
cache; offline, only the cache answers. :func:`validate_crate` fills a fresh cache first with:

- for ``https://w3id.org/ro/crate/1.1/context``: the RO-Crate context the ``rocrate`` package ships
  (``rocrate/data/ro-crate.jsonld``, read from the installed package: RO-Crate 1.3's, which keeps
  every term of 1.1 with the same IRI);
- for ``https://w3id.org/ro/terms/workflow-run/context``: the one term of it the crate uses
  (``environment``), mapped to its IRI in the workflow-run vocabulary, written here.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import rocrate
from requests import Request, Response
from requests_cache import CachedSession
from rocrate_validator import services
from rocrate_validator.models import Severity
from urllib3 import HTTPResponse

PROFILE = "process-run-crate-0.5"
RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.1/context"
WORKFLOW_RUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"


def _contexts() -> dict[str, bytes]:
    shipped = (Path(rocrate.__file__).parent / "data" / "ro-crate.jsonld").read_bytes()
    assert "sha256" in json.loads(shipped)["@context"]
    wfrun = {"@context": {"wfrun": "https://w3id.org/ro/terms/workflow-run#", "environment": "wfrun:environment"}}
    return {RO_CRATE_CONTEXT: shipped, WORKFLOW_RUN_CONTEXT: json.dumps(wfrun).encode()}


def fill_cache(cache: Path) -> Path:
    """An HTTP cache (requests-cache, SQLite: what the validator reads) holding the contexts."""
    session = CachedSession(cache_name=str(cache), backend="sqlite", allowable_methods=("GET",),
                            allowable_codes=(200,))
    for url, body in _contexts().items():
        response = Response()
        response.status_code, response._content, response.url, response.encoding = 200, body, url, "utf-8"
        response.headers["Content-Type"] = "application/ld+json"
        response.raw = HTTPResponse(body=io.BytesIO(body), status=200, preload_content=False, request_url=url,
                                    headers={"Content-Type": "application/ld+json"})
        response.request = Request("GET", url).prepare()
        session.cache.save_response(response)
    session.close()
    return cache


def validate_crate(crate: Path, scratch: Path, severity: str = "REQUIRED") -> list[str]:
    """The issues roc-validator finds in the crate folder ``crate`` at ``severity`` and above, offline
    (an empty list: the crate conforms)."""
    cache = fill_cache(scratch / "roc-validator-cache")
    settings = services.ValidationSettings(rocrate_uri=str(crate), profile_identifier=PROFILE,
                                           requirement_severity=Severity[severity], offline=True, cache_path=cache)
    result = services.validate(settings)
    issues = [f"{i.severity.name} {i.identifier}: {i.message} ({i.violatingEntity})"
              for i in result.get_issues()]
    assert issues or result.passed()
    return issues
