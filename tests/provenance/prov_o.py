"""PROV-O's domains, ranges, class hierarchy and disjointness, written out from the W3C
Recommendation (https://www.w3.org/TR/prov-o/, sections 3.1-3.4 and 4: each term's "has domain",
"has range", "is subclass of" and "is disjoint with"), and a check of every triple of a graph
against them (:func:`violations`).

The check is stricter than an OWL reasoner, which only finds a contradiction: every subject and
object of a ``prov:`` property must be *declared* (``rdf:type``, with subclasses) as one of the
property's domain and range classes, literals only where PROV-O has a datatype property, an IRI or
blank node everywhere else. The ``p4l:`` vocabulary's own ``rdfs:subClassOf``, ``rdfs:domain`` and
``rdfs:range`` axioms take part in the inference, so a ``p4l:`` attribute declared for entities but
written on an activity shows up as an Entity/Activity clash.
"""

from __future__ import annotations

from collections.abc import Iterable

import rdflib
from rdflib import RDF, RDFS, Literal, URIRef

PROV = "http://www.w3.org/ns/prov#"
XSD_DATETIME = "http://www.w3.org/2001/XMLSchema#dateTime"

#: class -> its direct superclasses (PROV-O 3.1-3.4)
SUBCLASS_OF: dict[str, tuple[str, ...]] = {
    "Entity": (), "Activity": (), "Agent": (), "Location": (), "Role": (), "Influence": (),
    "InstantaneousEvent": (),
    "Collection": ("Entity",), "EmptyCollection": ("Collection",), "Bundle": ("Entity",), "Plan": ("Entity",),
    "Person": ("Agent",), "Organization": ("Agent",), "SoftwareAgent": ("Agent",),
    "EntityInfluence": ("Influence",), "ActivityInfluence": ("Influence",), "AgentInfluence": ("Influence",),
    "Usage": ("EntityInfluence", "InstantaneousEvent"), "Start": ("EntityInfluence", "InstantaneousEvent"),
    "End": ("EntityInfluence", "InstantaneousEvent"), "Derivation": ("EntityInfluence",),
    "Revision": ("Derivation",), "Quotation": ("Derivation",), "PrimarySource": ("Derivation",),
    "Generation": ("ActivityInfluence", "InstantaneousEvent"),
    "Invalidation": ("ActivityInfluence", "InstantaneousEvent"), "Communication": ("ActivityInfluence",),
    "Association": ("AgentInfluence",), "Attribution": ("AgentInfluence",), "Delegation": ("AgentInfluence",),
}

#: pairs declared owl:disjointWith
DISJOINT = (("Activity", "Entity"), ("ActivityInfluence", "EntityInfluence"), ("Agent", "InstantaneousEvent"),
            ("Entity", "InstantaneousEvent"))

_ANY_ELEMENT = ("Activity", "Agent", "Entity")
#: property -> (domain, range): each a tuple of classes (a union; ``()`` for none), or for a
#: datatype property's range ``"literal"`` (any literal) or ``"dateTime"`` (an ``xsd:dateTime``)
PROPERTIES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | str]] = {
    # starting-point terms
    "wasGeneratedBy": (("Entity",), ("Activity",)),
    "wasDerivedFrom": (("Entity",), ("Entity",)),
    "wasAttributedTo": (("Entity",), ("Agent",)),
    "startedAtTime": (("Activity",), "dateTime"),
    "used": (("Activity",), ("Entity",)),
    "wasInformedBy": (("Activity",), ("Activity",)),
    "endedAtTime": (("Activity",), "dateTime"),
    "wasAssociatedWith": (("Activity",), ("Agent",)),
    "actedOnBehalfOf": (("Agent",), ("Agent",)),
    # expanded terms
    "alternateOf": (("Entity",), ("Entity",)),
    "specializationOf": (("Entity",), ("Entity",)),
    "generatedAtTime": (("Entity",), "dateTime"),
    "hadPrimarySource": (("Entity",), ("Entity",)),
    "value": (("Entity",), "literal"),
    "wasQuotedFrom": (("Entity",), ("Entity",)),
    "wasRevisionOf": (("Entity",), ("Entity",)),
    "invalidatedAtTime": (("Entity",), "dateTime"),
    "wasInvalidatedBy": (("Entity",), ("Activity",)),
    "hadMember": (("Collection",), ("Entity",)),
    "wasStartedBy": (("Activity",), ("Entity",)),
    "wasEndedBy": (("Activity",), ("Entity",)),
    "invalidated": (("Activity",), ("Entity",)),
    "influenced": ((), ()),
    "atLocation": (("Activity", "Agent", "Entity", "InstantaneousEvent"), ("Location",)),
    "generated": (("Activity",), ("Entity",)),
    "wasInfluencedBy": (_ANY_ELEMENT, _ANY_ELEMENT),
    # qualified terms
    "qualifiedInfluence": (_ANY_ELEMENT, ("Influence",)),
    "qualifiedGeneration": (("Entity",), ("Generation",)),
    "qualifiedDerivation": (("Entity",), ("Derivation",)),
    "qualifiedPrimarySource": (("Entity",), ("PrimarySource",)),
    "qualifiedQuotation": (("Entity",), ("Quotation",)),
    "qualifiedRevision": (("Entity",), ("Revision",)),
    "qualifiedAttribution": (("Entity",), ("Attribution",)),
    "qualifiedInvalidation": (("Entity",), ("Invalidation",)),
    "qualifiedStart": (("Activity",), ("Start",)),
    "qualifiedUsage": (("Activity",), ("Usage",)),
    "qualifiedCommunication": (("Activity",), ("Communication",)),
    "qualifiedAssociation": (("Activity",), ("Association",)),
    "qualifiedEnd": (("Activity",), ("End",)),
    "qualifiedDelegation": (("Agent",), ("Delegation",)),
    "influencer": (("Influence",), ()),
    "entity": (("EntityInfluence",), ("Entity",)),
    "hadUsage": (("Derivation",), ("Usage",)),
    "hadGeneration": (("Derivation",), ("Generation",)),
    "activity": (("ActivityInfluence",), ("Activity",)),
    "agent": (("AgentInfluence",), ("Agent",)),
    "hadPlan": (("Association",), ("Plan",)),
    # domain: Influence, and one of these (ActivityInfluence has prov:hadActivity max 0)
    "hadActivity": (("Delegation", "Derivation", "End", "Start"), ("Activity",)),
    "atTime": (("InstantaneousEvent",), "dateTime"),
    "hadRole": (("Association", "InstantaneousEvent"), ("Role",)),
}


def _closure(classes: Iterable[str], parents: dict[str, set[str]]) -> set[str]:
    out, todo = set(), list(classes)
    while todo:
        c = todo.pop()
        if c not in out:
            out.add(c)
            todo.extend(parents.get(c, ()))
    return out


def violations(graph: rdflib.Graph, vocabulary: rdflib.Graph | None = None) -> list[str]:
    """Every triple of ``graph`` that breaks PROV-O's domains, ranges or disjointness (and the
    ``vocabulary``'s domains and ranges), as readable lines; empty when there is none."""
    parents: dict[str, set[str]] = {PROV + c: {PROV + p for p in ps} for c, ps in SUBCLASS_OF.items()}
    extra_domain: dict[str, set[str]] = {}
    extra_range: dict[str, set[str]] = {}
    if vocabulary is not None:
        for c, p in vocabulary.subject_objects(RDFS.subClassOf):
            if isinstance(c, URIRef) and isinstance(p, URIRef):
                parents.setdefault(str(c), set()).add(str(p))
        for prop, cls in vocabulary.subject_objects(RDFS.domain):
            extra_domain.setdefault(str(prop), set()).add(str(cls))
        for prop, cls in vocabulary.subject_objects(RDFS.range):
            if isinstance(cls, URIRef) and not str(cls).startswith("http://www.w3.org/2001/XMLSchema#"):
                extra_range.setdefault(str(prop), set()).add(str(cls))

    declared: dict[object, set[str]] = {}
    for s, o in graph.subject_objects(RDF.type):
        declared.setdefault(s, set()).add(str(o))
    asserted = {n: _closure(cs, parents) for n, cs in declared.items()}
    inferred = {n: set(cs) for n, cs in asserted.items()}

    def infer(node: object, classes: Iterable[str]) -> None:
        inferred.setdefault(node, set()).update(_closure(classes, parents))

    problems: list[str] = []
    for s, p, o in graph:
        p = str(p)
        if p in extra_domain:
            infer(s, extra_domain[p])
        if p in extra_range and not isinstance(o, Literal):
            infer(o, extra_range[p])
        if p == str(RDF.type) and str(o).startswith(PROV) and str(o)[len(PROV):] not in SUBCLASS_OF:
            problems.append(f"{s} a {o}: not a PROV-O class")
        if not p.startswith(PROV):
            continue
        name = p[len(PROV):]
        if name not in PROPERTIES:
            problems.append(f"{s} {p} {o}: not a PROV-O property")
            continue
        domain, range_ = PROPERTIES[name]
        if len(domain) == 1:
            infer(s, [PROV + domain[0]])
        if domain and not asserted.get(s, set()) & {PROV + c for c in domain}:
            problems.append(f"{s} prov:{name} {o}: the subject is not declared {' or '.join(domain)} "
                            f"(declared: {sorted(declared.get(s, ()))})")
        if isinstance(range_, str):
            if not isinstance(o, Literal):
                problems.append(f"{s} prov:{name} {o}: a datatype property with a resource as value")
            elif range_ == "dateTime" and str(o.datatype) != XSD_DATETIME:
                problems.append(f"{s} prov:{name} {o!r}: not an xsd:dateTime")
            continue
        if isinstance(o, Literal):
            problems.append(f"{s} prov:{name} {o!r}: a literal where PROV-O's range is "
                            f"{' or '.join(range_) or 'a resource'}")
            continue
        if len(range_) == 1:
            infer(o, [PROV + range_[0]])
        if range_ and not asserted.get(o, set()) & {PROV + c for c in range_}:
            problems.append(f"{s} prov:{name} {o}: the object is not declared {' or '.join(range_)} "
                            f"(declared: {sorted(declared.get(o, ()))})")
    for node, classes in inferred.items():
        for a, b in DISJOINT:
            if PROV + a in classes and PROV + b in classes:
                problems.append(f"{node}: both {a} and {b}, which PROV-O declares disjoint")
        if PROV + "ActivityInfluence" in classes and (node, URIRef(PROV + "hadActivity"), None) in graph:
            problems.append(f"{node}: an ActivityInfluence with prov:hadActivity (PROV-O: at most 0)")
    return problems
