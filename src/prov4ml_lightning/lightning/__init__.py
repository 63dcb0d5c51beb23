"""The Lightning front door: :class:`Prov4MLCallback` and the pieces that read Lightning's state.

- :mod:`.callback`: the hooks;
- :mod:`.run_link`: rank zero's writes into the recorder (``RunLink``) and other ranks' ``NullLink``;
- :mod:`.loops`: training epochs and evaluation loops;
- :mod:`.logged`: what ``self.log`` logged, as Lightning's loggers get it;
- :mod:`.hparams`: a fit's hyperparameters, LR names, early-stopping state.
"""
