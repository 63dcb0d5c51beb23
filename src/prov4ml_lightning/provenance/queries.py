"""Lineage questions as SPARQL over a run's PROV-O export (``prov4ml export --format ttl``), the
same text docs/provenance-model.md shows for users to copy. Run them with rdflib::

    import rdflib
    g = rdflib.Graph().parse("run.ttl")
    for row in g.query(QUERIES["a_hyperparameters"]): ...
"""

from __future__ import annotations

__all__ = ["PREFIXES", "QUERIES"]

PREFIXES = """PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX p4l: <https://w3id.org/prov4ml-lightning/ns#>
PREFIX mls: <http://www.w3.org/ns/mls#>
PREFIX xsd: <http://www.w3.org/2001/XMLSchema#>
PREFIX foaf: <http://xmlns.com/foaf/0.1/>
"""

#: name -> SPARQL text (with :data:`PREFIXES`)
QUERIES = {
    # (a) the datasets, code version and hyperparameters behind the final model (its latest version)
    "a_hyperparameters": """SELECT ?model ?name ?value WHERE {
  ?model a mls:Model ; p4l:version ?version ; prov:wasGeneratedBy ?fit .
  FILTER NOT EXISTS { ?newer a mls:Model ; p4l:version ?v2 . FILTER (?v2 > ?version) }
  ?fit prov:used ?param . ?param a mls:HyperParameterSetting ; p4l:name ?name ; mls:hasValue ?value .
}""",
    # the data behind the final model's weights: its lineage (generation, usage, derivation,
    # communication, and other holders of the same weights), the training data only
    "a_datasets": """SELECT DISTINCT ?model ?dataset ?role ?fingerprint WHERE {
  ?model a mls:Model ; p4l:version ?version .
  FILTER NOT EXISTS { ?newer a mls:Model ; p4l:version ?v2 . FILTER (?v2 > ?version) }
  ?model (prov:wasGeneratedBy|prov:used|prov:wasDerivedFrom|prov:wasInformedBy|prov:alternateOf|^prov:alternateOf)+
      ?dataset .
  ?dataset a mls:Dataset ; p4l:role ?role .
  OPTIONAL { ?dataset p4l:fingerprint ?fingerprint }
}""",
    # the data behind the final model's selection: the decisions that chose it (EarlyStopping's,
    # which ended the fit that generated it; ModelCheckpoint's best or top-k, holding its weights),
    # the monitored values they used, and the data the loops that computed those values read
    "a_selection_datasets": """SELECT DISTINCT ?model ?decision ?dataset ?role WHERE {
  ?model a mls:Model ; p4l:version ?version .
  FILTER NOT EXISTS { ?newer a mls:Model ; p4l:version ?v2 . FILTER (?v2 > ?version) }
  { ?model prov:wasGeneratedBy/prov:qualifiedEnd/prov:entity ?decision }
  UNION { ?model (prov:alternateOf|^prov:alternateOf)*/(^prov:specializationOf|^prov:hadMember) ?decision }
  ?decision prov:wasGeneratedBy/prov:used ?value . ?value prov:wasGeneratedBy/prov:used ?dataset .
  ?dataset a mls:Dataset ; p4l:role ?role .
}""",
    # the code behind the model: the Plan (the entry script, with its commit) on its lineage path
    "a_code": """SELECT DISTINCT ?model ?code ?script ?commit ?dirty WHERE {
  ?model a mls:Model ; p4l:version ?version .
  FILTER NOT EXISTS { ?newer a mls:Model ; p4l:version ?v2 . FILTER (?v2 > ?version) }
  ?model (prov:wasGeneratedBy|prov:wasDerivedFrom|prov:used|prov:wasInformedBy)+ ?code . ?code a prov:Plan .
  OPTIONAL { ?code p4l:script_sha256 ?script } OPTIONAL { ?code p4l:git_commit ?commit }
  OPTIONAL { ?code p4l:git_dirty ?dirty }
}""",
    # (b) the best checkpoint, its epoch, its derivation chain, and the logged models with its weights
    "b_best_checkpoint": """SELECT ?checkpoint ?epoch ?step ?sha ?model WHERE {
  ?checkpoint a p4l:Checkpoint ; p4l:best true ; p4l:epoch ?epoch ; p4l:global_step ?step .
  OPTIONAL { ?checkpoint p4l:state_dict_sha256 ?sha }
  OPTIONAL { ?model a mls:Model ; (prov:alternateOf|^prov:alternateOf)+ ?checkpoint }
}""",
    "b_chain": """SELECT ?checkpoint ?earlier ?step WHERE {
  ?checkpoint a p4l:Checkpoint ; p4l:best true .
  ?checkpoint prov:wasDerivedFrom+ ?earlier . ?earlier p4l:global_step ?step .
} ORDER BY DESC(?step)""",
    # (b) the checkpoint each evaluation loaded, and the choice that made it the best (if one did)
    "b_evaluated_checkpoint": """SELECT ?loop ?checkpoint ?choice ?monitor ?score WHERE {
  ?loop prov:used ?checkpoint . ?checkpoint a p4l:Checkpoint .
  { ?loop a p4l:TestLoop } UNION { ?loop a p4l:ValidationLoop } UNION { ?loop a p4l:PredictLoop }
  OPTIONAL { ?choice a p4l:BestCheckpoint ; prov:specializationOf ?checkpoint ; p4l:monitor ?monitor .
             OPTIONAL { ?choice p4l:best_model_score ?score } }
}""",
    # (b) why each fit ended early: the decision, its reason and patience, and the values it compared
    "b_early_stopping": """SELECT ?fit ?decision ?monitor ?reason ?patience ?value WHERE {
  ?fit a p4l:Fit ; prov:qualifiedEnd ?end . ?end prov:entity ?decision ; prov:hadActivity ?decider .
  ?decision a p4l:StopDecision ; p4l:monitor ?monitor ; p4l:stop_reason ?reason .
  OPTIONAL { ?decision p4l:patience ?patience }
  ?decider prov:used ?value .
}""",
    # (b) where that chain begins: the weights the fit started from (its initial weights, or the
    # model state restored from a checkpoint), with their hash
    "b_initial": """SELECT ?weights ?sha ?step WHERE {
  ?checkpoint a p4l:Checkpoint ; p4l:best true ; prov:wasDerivedFrom+ ?weights .
  ?weights a p4l:ModelState ; p4l:global_step ?step .
  OPTIONAL { ?weights p4l:state_dict_sha256 ?sha }
}""",
    # (c) the responsible agents and what they did
    "c_agents": """SELECT DISTINCT ?activity ?agent ?role ?type WHERE {
  ?activity prov:qualifiedAssociation ?assoc . ?assoc prov:agent ?agent ; prov:hadRole ?role .
  ?agent a ?type . FILTER (?type != prov:Agent)
}""",
    # (c) the person responsible (name, e-mail, ORCID iD) and the organisation they act for
    "c_responsible": """SELECT DISTINCT ?person ?name ?mbox ?orcid ?login ?organization ?org_name WHERE {
  ?run a p4l:Run ; prov:wasAssociatedWith ?person . ?person a prov:Person .
  OPTIONAL { ?person foaf:name ?name } OPTIONAL { ?person foaf:mbox ?mbox }
  OPTIONAL { ?person p4l:orcid ?orcid } OPTIONAL { ?person p4l:os_user ?login }
  OPTIONAL { ?person prov:actedOnBehalfOf ?organization . ?organization a prov:Organization ;
             foaf:name ?org_name }
}""",
    # (d) the sessions of a run, and the checkpoint each fit resumed from
    "d_sessions": """SELECT ?session ?n ?start ?end ?status ?fit ?checkpoint WHERE {
  ?session a p4l:Session ; p4l:session ?n ; prov:startedAtTime ?start .
  OPTIONAL { ?session prov:endedAtTime ?end } OPTIONAL { ?session p4l:status ?status }
  OPTIONAL { ?fit a p4l:Fit ; prov:qualifiedStart [ prov:hadActivity ?session ] .
             OPTIONAL { ?fit prov:used ?checkpoint . ?checkpoint a p4l:Checkpoint } }
} ORDER BY ?n""",
    # (e) where the per-step values are, with their hash
    "e_points": """SELECT ?series ?name ?count ?file ?location ?sha WHERE {
  ?series a p4l:MetricSeries, prov:Collection ; p4l:name ?name ; p4l:count ?count ; p4l:pointsIn ?file .
  ?file prov:atLocation ?location ; p4l:sha256 ?sha .
}""",
    # (f) the environment the final model was trained in, and the machine
    "f_environment": """SELECT DISTINCT ?env ?python ?torch ?lightning ?packages ?packages_sha ?host ?host_id WHERE {
  ?model a mls:Model ; p4l:version ?version .
  FILTER NOT EXISTS { ?newer a mls:Model ; p4l:version ?v2 . FILTER (?v2 > ?version) }
  ?model (prov:wasGeneratedBy|prov:wasDerivedFrom|prov:used|prov:wasInformedBy)+ ?env .
  ?env a p4l:Environment ; p4l:python_version ?python ; p4l:torch_version ?torch .
  OPTIONAL { ?env p4l:lightning_version ?lightning }
  OPTIONAL { ?env p4l:packagesFile ?packages . ?packages p4l:sha256 ?packages_sha }
  OPTIONAL { ?env prov:wasAttributedTo ?host . OPTIONAL { ?host p4l:host_id ?host_id } }
}""",
    # what depends on the test data: its test loops and the values they computed, nothing else
    "test_downstream": """SELECT DISTINCT ?dataset ?downstream WHERE {
  ?dataset a mls:Dataset ; p4l:role "test" .
  ?downstream (prov:used|prov:wasGeneratedBy|prov:wasDerivedFrom|prov:wasInformedBy|prov:alternateOf)+ ?dataset .
}""",
    # the negative: nothing read or made after a checkpoint was written is upstream of it (along the
    # dependencies, and the activities that started them)
    "negative": """SELECT ?checkpoint ?upstream ?t WHERE {
  ?checkpoint a p4l:Checkpoint ; prov:qualifiedGeneration ?g . ?g prov:atTime ?tc .
  {
    ?checkpoint (prov:used|prov:wasGeneratedBy|prov:wasInformedBy|prov:wasDerivedFrom
                 |prov:qualifiedStart/prov:hadActivity)+ ?upstream .
    { ?upstream prov:startedAtTime ?t } UNION { ?upstream prov:qualifiedGeneration ?g2 . ?g2 prov:atTime ?t }
  } UNION {
    ?checkpoint (prov:used|prov:wasGeneratedBy|prov:wasInformedBy|prov:wasDerivedFrom
                 |prov:qualifiedStart/prov:hadActivity)+ ?reader .
    ?reader prov:qualifiedUsage ?u . ?u prov:entity ?upstream ; prov:atTime ?t .
  }
  FILTER (?t > ?tc)
}""",
}
QUERIES = {name: PREFIXES + text for name, text in QUERIES.items()}
