"""The hand-off file rank zero leaves for the process that launched ``ddp_spawn``'s ranks."""

from __future__ import annotations

import pickle
from pathlib import Path

from prov4ml_lightning import Prov4MLCallback
from prov4ml_lightning.distributed.handoff import handoff_path, read_handoff, write_handoff
from prov4ml_lightning.tracking.recorder import RunOutputs


def _outputs(root: Path) -> RunOutputs:
    return RunOutputs(run_id="abc", tracking_uri="http://127.0.0.1:5000", provenance_dir=root,
                      prov_json=root / "provgraph_abc.json", prov_dot=root / "provgraph_abc.dot", prov_svg=None,
                      metrics_file=root / "metrics_abc.csv", extra={"provn": root / "provgraph_abc.provn"})


def test_handoff_round_trip_is_read_once(tmp_path):
    path = handoff_path(tmp_path, "tok")
    write_handoff(path, "abc", _outputs(tmp_path))
    assert read_handoff(path) == ("abc", _outputs(tmp_path))
    assert not path.exists() and read_handoff(path) is None


def test_callback_in_its_home_process_adopts_the_handoff_and_ships_it_to_ranks(tmp_path):
    callback = Prov4MLCallback(prov_user_namespace="www.example.org", experiment_name="e",
                               provenance_save_dir=tmp_path, mlflow_save_dir=tmp_path / "mlflow")
    assert callback.run_id is None and callback.outputs is None
    write_handoff(handoff_path(tmp_path, callback._handoff_token), "abc", _outputs(tmp_path))
    shipped = pickle.loads(pickle.dumps(callback))  # what spawn does for the next fit
    assert shipped.run_id == "abc"  # the next fit's ranks reopen the run, as with strategy="ddp"
    assert callback.run_id == "abc" and callback.outputs == _outputs(tmp_path)
