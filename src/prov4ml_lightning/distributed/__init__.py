"""Distributed runs (a plug-in over the core): who this process is, and the parts of ranks other than zero.

- :mod:`.ranks`: :class:`RankInfo`, the run-id broadcast all ranks join;
- :mod:`.parts`: part folders of ranks other than zero, merged by rank zero at the end.
"""
