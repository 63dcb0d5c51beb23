"""Namespaces and terms used in the PROV documents (documented in ``docs/provenance-model.md``)."""

from __future__ import annotations

__all__ = ["FOAF_NS", "MLS_NS", "ORCID_NS", "P4L_NS", "PROVML_NS", "USER_PREFIX"]

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
