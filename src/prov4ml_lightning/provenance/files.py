"""PROV documents on disk: atomic writes (one document, or every file of a run), reading back (any
format the ``prov`` package reads), serialising for ``prov4ml export``, and the schema
and round-trip helpers ``checks.py`` uses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prov.model import ProvDocument

from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn
from prov4ml_lightning.files import atomic_write, atomic_write_text

__all__ = ["load_document", "prov_json_schema_path", "read_document", "round_trip", "serialize_document",
           "to_json_text", "write_document", "write_run_files"]


def write_document(doc: ProvDocument, path: Path, fmt: str = "json") -> Path:
    """Serialise ``doc`` to ``path`` atomically (temp file + rename): never a half-written file."""
    if fmt not in ("json", "provn", "ttl", "turtle", "xml", "jsonld"):
        raise Prov4MLInputError(f"unknown PROV format {fmt!r}")
    # Streamed into the file (a document can be large), except the text-only serialisations.
    if fmt == "json":
        with _json_serializer_only():
            return atomic_write(path, lambda fh: doc.serialize(fh, format="json", indent=2))
    if fmt == "xml":
        return atomic_write(path, lambda fh: doc.serialize(fh, format="xml"))
    return atomic_write_text(path, serialize_document(doc, fmt))


@contextlib.contextmanager
def _json_serializer_only() -> Iterator[None]:
    """While it lasts, ``prov``'s serialiser registry holds the JSON serialiser alone, if nothing
    had loaded it yet.

    ``ProvDocument.serialize(format="json")`` asks ``prov.serializers.get``, which first loads
    every serialiser the package has, the RDF one and with it ``rdflib``: 0.3 s of imports that
    every ``end_run`` would pay to write JSON (a third of a short run's end, measured). The
    registry is left as it was found (``None``: loaded in full by the next caller that needs more).
    """
    from prov.serializers import Registry
    from prov.serializers.provjson import ProvJSONSerializer

    if Registry.serializers is not None:
        yield
        return
    only = {"json": ProvJSONSerializer}
    Registry.serializers = only
    try:
        yield
    finally:
        if Registry.serializers is only:
            Registry.serializers = None


def write_run_files(doc: ProvDocument, base: Path, formats: Iterable[str], title: str, *,
                    call: str = "end_run") -> dict[str, Path]:
    """The PROV files of a run, as ``end_run`` and ``prov4ml recover`` write them.

    ``<base>.json`` always, ``<base>.<fmt>`` for the other ``formats``, the graph ``<base>.dot``
    titled ``title`` and, when Graphviz is installed, ``<base>.svg`` and the interactive view
    ``<base>.html``. Every file is written atomically, and the set too: the PROV-JSON, the record the
    others are drawn from, is written last, so when a file cannot be written (``OSError``: a full disk)
    the PROV-JSON is the one there before (an earlier session's, or none), and the files this call wrote
    are removed before the error is raised: never a new graph beside an old record (``prov4ml recover``
    writes the set once there is room). Returns the paths by kind (``json``, ``provn``, ``ttl``,
    ``xml``, ``dot``, ``svg``, ``html``).
    """
    from prov4ml_lightning.provenance.graph import render_svg, to_dot
    from prov4ml_lightning.provenance.html import to_html
    from prov4ml_lightning.provenance.views import to_graph

    paths: dict[str, Path] = {}
    try:
        for fmt in formats:
            if fmt != "json":
                paths[fmt] = write_document(doc, base.with_suffix(f".{fmt}"), fmt)
        spec = to_graph(doc)
        paths["dot"] = atomic_write_text(base.with_suffix(".dot"), to_dot(spec, title))
        try:
            svg = render_svg(paths["dot"])
            if svg is not None:
                paths["svg"] = svg
                paths["html"] = atomic_write_text(base.with_suffix(".html"), to_html(spec, title))
        except Exception as err:  # a broken Graphviz install must not lose the run; a full disk is the run's
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            warn(f"{call}: Graphviz could not render {paths['dot']} ({err!r})", Prov4MLWarning)
        paths["json"] = write_document(doc, base.with_suffix(".json"), "json")
    except OSError:
        for path in paths.values():
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return {"json": paths.pop("json"), **paths}


def read_document(path: str | os.PathLike[str], fmt: str = "json") -> ProvDocument:
    """Read a PROV document written by :func:`write_document`."""
    from prov import read

    if fmt in ("rdf", "ttl", "turtle"):  # drop the shortcut triples: prov would read each as a second record
        text = Path(path).read_text(encoding="utf-8").split(_SHORTCUT_MARK, 1)[0]
        return read(text, format="rdf", rdf_format="turtle")
    return read(str(path), format=fmt)



# -- reading documents back (the `prov4ml` command line) ------------------------------------


def load_document(path: str | os.PathLike[str]) -> ProvDocument:
    """Read a PROV-JSON file (bundles included) with errors a user can act on.

    Raises:
        Prov4MLInputError: the file is missing, is not JSON, or is not a PROV-JSON document.
    """

    p = Path(path)
    if not p.is_file():
        raise Prov4MLInputError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as err:
        raise Prov4MLInputError(f"{p}: not a PROV-JSON file (not UTF-8 text: {err.reason})") from err
    except json.JSONDecodeError as err:
        raise Prov4MLInputError(f"{p}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    if not isinstance(data, dict):
        raise Prov4MLInputError(f"{p}: not a PROV-JSON document (top level is {type(data).__name__}, not an object)")
    try:
        return ProvDocument.deserialize(content=text, format="json")
    except Exception as err:  # prov raises bare errors of several kinds on bad structure
        raise Prov4MLInputError(f"{p}: not a valid PROV-JSON document ({type(err).__name__}: {err})") from err


def serialize_document(doc: ProvDocument, fmt: str) -> str:
    """``doc`` as text in ``fmt``: ``json``, ``provn``, ``ttl``, ``xml`` or ``jsonld``."""
    if fmt == "json":
        return doc.serialize(format="json", indent=2)
    if fmt == "provn":
        return doc.get_provn()
    if fmt in ("ttl", "turtle"):
        # prov's own Turtle, with the shortcut triples appended (rdflib re-serialising the whole
        # graph would shorten xsd:double literals: 0.800000011920929 came back as 0.8)
        text = doc.serialize(format="rdf", rdf_format="turtle")
        extra = prov_o_graph(doc, shortcuts_only=True).serialize(format="nt", encoding="utf-8").decode()
        return text.rstrip("\n") + "\n\n" + _SHORTCUT_MARK + "\n" + extra
    if fmt == "xml":
        return doc.serialize(format="xml")
    if fmt == "jsonld":
        return prov_o_graph(doc).serialize(format="json-ld")
    raise Prov4MLInputError(f"unknown PROV format {fmt!r}")


_SHORTCUT_MARK = "# PROV-O unqualified shortcuts of the qualified influences above"  # and the types of locations, roles

#: PROV-O's qualified pattern -> its unqualified shortcut: (qualifying property, influence
#: property, shortcut). ``prov`` writes only the qualified forms (blank nodes). A start's or end's
#: shortcut names its trigger (an entity: ``prov:wasStartedBy``'s range is ``prov:Entity``); the
#: activity that started or ended it (PROV-DM's starter, ender) stays on the qualified form only,
#: ``prov:hadActivity``, which has no shortcut.
_SHORTCUTS = (
    ("qualifiedUsage", "entity", "used"),
    ("qualifiedGeneration", "activity", "wasGeneratedBy"),
    ("qualifiedDerivation", "entity", "wasDerivedFrom"),
    ("qualifiedAssociation", "agent", "wasAssociatedWith"),
    ("qualifiedAttribution", "agent", "wasAttributedTo"),
    ("qualifiedDelegation", "agent", "actedOnBehalfOf"),
    ("qualifiedCommunication", "activity", "wasInformedBy"),
    ("qualifiedStart", "entity", "wasStartedBy"),
    ("qualifiedEnd", "entity", "wasEndedBy"),
    ("qualifiedInvalidation", "activity", "wasInvalidatedBy"),
    ("qualifiedEnd", "entity", "wasEndedBy"),  # the trigger entity (an EarlyStopping decision)
)
#: the values of these properties are typed with the property's PROV-O range (``prov`` writes the
#: IRI alone): a location is a ``prov:Location``, a role a ``prov:Role``
_TYPED_VALUES = (("atLocation", "Location"), ("hadRole", "Role"))


def prov_o_graph(doc: ProvDocument, *, shortcuts_only: bool = False) -> Any:
    """``doc`` as an rdflib graph in PROV-O, with each qualified influence's unqualified shortcut
    (``?a prov:used ?e`` beside ``?a prov:qualifiedUsage [prov:entity ?e]``), so both the
    tutorials' queries and the qualified ones find it, and the type of each location and role
    (docs/provenance-model.md, "PROV-JSON and PROV-O"). ``shortcuts_only``: those added triples alone."""
    import rdflib

    graph = rdflib.ConjunctiveGraph()
    graph.parse(data=doc.serialize(format="rdf", rdf_format="turtle"), format="turtle")
    prov = rdflib.Namespace("http://www.w3.org/ns/prov#")
    added = rdflib.Graph()
    for qualified, influencer, shortcut in _SHORTCUTS:
        for subject, node in list(graph.subject_objects(prov[qualified])):
            for target in list(graph.objects(node, prov[influencer])):
                if (subject, prov[shortcut], target) not in graph:  # prov writes some itself
                    added.add((subject, prov[shortcut], target))
    for prop, cls in _TYPED_VALUES:
        for value in set(graph.objects(None, prov[prop])):
            if isinstance(value, rdflib.URIRef):
                added.add((value, rdflib.RDF.type, prov[cls]))
    if shortcuts_only:
        return added
    for triple in added:
        graph.add(triple)
    for prefix, ns in (("prov", str(prov)), *((n.prefix, n.uri) for n in doc.get_registered_namespaces())):
        graph.bind(prefix, ns)
    return graph



# -- validity (used by checks.py, which must not import prov) ---------------------------------


def prov_json_schema_path() -> Path:
    """The official PROV-JSON JSON Schema as shipped inside the ``prov`` wheel.

    Raises:
        FileNotFoundError: this ``prov`` build does not ship its test schemas.
    """
    import prov

    path = Path(prov.__file__).parent / "tests" / "schemas" / "prov-json.schema.json"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def to_json_text(doc: ProvDocument) -> str:
    """``doc`` as PROV-JSON text."""
    return doc.serialize(format="json")


def _canonical(value: Any) -> str:
    from prov.identifier import QualifiedName

    # NaN != NaN would make every document with a NaN metric "change" in a round trip
    if isinstance(value, float) and value != value:
        return "float:NaN"
    # a qualified name is its IRI: a reader may pick another prefix for it (PROV-O has no prefixes;
    # ``prov.read`` takes the first that fits, a parent folder's for a location)
    if isinstance(value, QualifiedName):
        return f"QualifiedName:<{value.uri}>"
    return f"{type(value).__name__}:{value!r}"


def _record_keys(doc: ProvDocument) -> dict[str, list[str]]:
    """Each record as a canonical string (blank relation ids dropped, attributes sorted)."""
    out: dict[str, list[str]] = {}
    scopes = [("", doc), *((f"{b.identifier} / ", b) for b in doc.bundles)]
    for scope, container in scopes:
        for rec in container.get_records():
            ident = rec.identifier
            name = str(ident) if ident is not None and not str(ident).startswith("_:") else ""
            attrs = sorted(f"{k}={_canonical(v)}" for k, v in rec.attributes)
            key = f"{scope}{rec.get_type().localpart}({name}; {', '.join(attrs)})"
            out.setdefault(f"{scope}{name}" if name else key[:160], []).append(key)
    return {k: sorted(v) for k, v in out.items()}


def round_trip(json_text: str, fmt: str) -> list[tuple[str, str]]:
    """Read PROV-JSON, write it as ``fmt`` (``provn``, ``xml`` or ``rdf``/Turtle), read that back
    with ``prov.read`` and compare; returns ``(record id, difference)`` pairs, empty when equal."""
    from prov import read

    doc = ProvDocument.deserialize(content=json_text, format="json")
    # PROV-O as ``prov`` writes it (qualified forms only): ``prov.read`` would take the shortcut
    # triples our Turtle adds for a second, unqualified record of each relation
    text = doc.serialize(format="rdf", rdf_format="turtle") if fmt == "rdf" else serialize_document(doc, fmt)
    try:
        back = read(text, format=fmt, **({"rdf_format": "turtle"} if fmt == "rdf" else {}))
    except Exception as err:
        return [("", f"prov.read cannot read the {fmt} serialisation back: {err!r}")]
    if back == doc:
        return []
    before, after = _record_keys(doc), _record_keys(back)
    problems = []
    for ident in sorted(set(before) | set(after)):
        a, b = sorted(before.get(ident, [])), sorted(after.get(ident, []))
        if a != b:
            lost = [x for x in a if x not in b]
            gained = [x for x in b if x not in a]
            problems.append((ident, f"changed in a {fmt} round trip: lost {lost[:2]}, gained {gained[:2]}"))
    return problems
