"""The Lightning front door: :class:`Prov4MLCallback` and the pieces that read Lightning's state.

- :mod:`.callback`: the hooks;
- :mod:`.tap`: what Lightning hands its loggers (keys, steps, values), taken where it hands them;
- :mod:`.run_link`: rank zero's writes into the recorder (``RunLink``); :mod:`.null_link`: other ranks' ``NullLink``;
- :mod:`.loops`: training epochs and evaluation loops;
- :mod:`.hparams`: a fit's hyperparameters, LR names, early-stopping state;
- :mod:`.loggers`: the original prov4ml's Lightning loggers and ``get_mlflow_logger``;
- :mod:`.optuna`: sweeps (an Optuna study of fits), with the ``sweeps`` extra.
"""
