"""Engines run the experiment's round loop with the client halves somewhere: in this process
(:mod:`.inprocess`, the default) or on Flower SuperNodes (:mod:`.flower`: simulation and deployment).

``fedmoe.engines.run(cfg)`` runs a config in-process; the Flower engine is imported on demand (it sets
Flower's environment when imported).
"""

from fedmoe.engines.inprocess import in_process_executor, run

__all__ = ["in_process_executor", "run"]
