"""Namespaces and terms used in the PROV documents (documented in ``docs/provenance-model.md``), and
the ``p4l:`` vocabulary shipped with the package (``assets/vocabulary.ttl``): reading it, the terms
a document uses that it does not define, and its rendering as docs/vocabulary.md.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

__all__ = ["FOAF_NS", "MLS_NS", "ORCID_NS", "P4L_NS", "PROVML_NS", "USER_PREFIX", "VOCABULARY_FILE", "undefined_terms",
           "vocabulary_graph", "vocabulary_markdown"]

#: prov4ml-lightning's own terms (record types and attributes).
P4L_NS = "https://w3id.org/prov4ml-lightning/ns#"
#: PROV-ML terms (Souza et al., 2019, "Provenance Data in the Machine Learning Lifecycle in
#: Computational Science and Engineering"): LearningStageExecution, TrainingExecution, ...
PROVML_NS = "https://w3id.org/provml#"
#: W3C ML-Schema (used by PROV-ML for models and data).
MLS_NS = "http://www.w3.org/ns/mls#"
#: FOAF (a person's and an organisation's ``foaf:name``, ``foaf:mbox``).
FOAF_NS = "http://xmlns.com/foaf/0.1/"
#: ORCID iDs: a person given by ORCID is identified by its IRI ``https://orcid.org/<id>``.
ORCID_NS = "https://orcid.org/"
#: Prefix of the user's namespace (``prov_user_namespace``) in documents.
USER_PREFIX = "user"

#: the Turtle file, inside the package
VOCABULARY_FILE = resources.files("prov4ml_lightning.provenance") / "assets" / "vocabulary.ttl"

_RDFS = "http://www.w3.org/2000/01/rdf-schema#"
_OWL = "http://www.w3.org/2002/07/owl#"


def vocabulary_graph() -> Any:
    """The vocabulary as an rdflib graph."""
    import rdflib

    return rdflib.Graph().parse(data=VOCABULARY_FILE.read_text(encoding="utf-8"), format="turtle")


def _defined(vocab: Any) -> tuple[set[str], tuple[str, ...]]:
    import rdflib

    label = rdflib.URIRef(_RDFS + "label")
    terms = {str(s)[len(P4L_NS):] for s in vocab.subjects(label, None) if str(s).startswith(P4L_NS)}
    prefixes = tuple(str(o) for o in vocab.objects(None, rdflib.URIRef(P4L_NS + "localNamePrefix")))
    return terms, prefixes


def undefined_terms(graph: Any) -> set[str]:
    """The ``p4l:`` local names ``graph`` (a run's PROV-O export) uses, as a class, property, role or
    identifier, that the vocabulary neither defines nor covers by a term family's prefix."""
    terms, prefixes = _defined(vocabulary_graph())
    used = {str(t)[len(P4L_NS):] for triple in graph for t in triple if str(t).startswith(P4L_NS)}
    return {t for t in used if t not in terms and not t.startswith(prefixes)}


def vocabulary_markdown() -> str:
    """docs/vocabulary.md: one table per kind of term (classes, roles, links, attributes, families)."""
    import rdflib

    vocab = vocabulary_graph()
    rdf_type = rdflib.RDF.type
    ns = {str(n): p for p, n in vocab.namespaces()}

    def short(node: Any) -> str:
        text = str(node)
        for uri, prefix in sorted(ns.items(), key=lambda kv: -len(kv[0])):
            if prefix and text.startswith(uri) and text != uri:
                return f"{prefix}:{text[len(uri):]}"
        return text

    def one(subject: Any, prop: str) -> str:
        values = sorted(short(o) if isinstance(o, rdflib.URIRef) else str(o)
                        for o in vocab.objects(subject, rdflib.URIRef(prop)))
        return ", ".join(f"`{v}`" if ":" in v and " " not in v else v for v in values)

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    sections = [
        ("Classes", _OWL + "Class", "superclasses", _RDFS + "subClassOf"),
        ("Roles", "http://www.w3.org/ns/prov#Role", None, None),
        ("Links between records", _OWL + "ObjectProperty", "domain -> range", _RDFS + "domain"),
        ("Attributes", _OWL + "DatatypeProperty", "domain", _RDFS + "domain"),
        ("Families of terms named after user input", P4L_NS + "TermFamily", "domain", _RDFS + "domain"),
    ]
    lines = ["# The p4l: vocabulary", "",
             "<!-- generated from src/prov4ml_lightning/provenance/assets/vocabulary.ttl by",
             "     prov4ml_lightning.provenance.vocab.vocabulary_markdown(); do not edit by hand -->", "",
             f"Namespace `p4l:` = `{P4L_NS}`. The Turtle file ships in the package "
             "(`prov4ml_lightning/provenance/assets/vocabulary.ttl`); every `p4l:` term a document uses is "
             "defined there (tests/provenance/test_vocabulary.py). The model: docs/provenance-model.md.", ""]
    for title, kind, column, prop in sections:
        subjects = sorted({s for s in vocab.subjects(rdf_type, rdflib.URIRef(kind)) if str(s).startswith(P4L_NS)},
                          key=lambda s: str(s).lower())
        if not subjects:
            continue
        lines += [f"## {title}", ""]
        if title.startswith("Families"):
            lines += ["| prefix | domain | meaning |", "|---|---|---|"]
            for s in subjects:
                lines.append(f"| `p4l:{one(s, P4L_NS + 'localNamePrefix')}...` | {one(s, _RDFS + 'domain')} "
                             f"| {cell(one(s, _RDFS + 'comment'))} |")
        elif column is None:
            lines += ["| term | meaning |", "|---|---|"]
            lines += [f"| `{short(s)}` | {cell(one(s, _RDFS + 'comment'))} |" for s in subjects]
        else:
            lines += [f"| term | {column} | meaning |", "|---|---|---|"]
            for s in subjects:
                where = one(s, prop) if prop else ""
                if title.startswith("Links"):
                    where = f"{where} -> {one(s, _RDFS + 'range')}"
                lines.append(f"| `{short(s)}` | {where} | {cell(one(s, _RDFS + 'comment'))} |")
        lines.append("")
    return "\n".join(lines)
