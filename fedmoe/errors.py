"""The kit's base of the errors it raises on purpose about the state of a run (not a bad value).

A bad value is a ``ValueError`` (:class:`fedmoe.config.ConfigError` and its kin); a run that cannot go on
(a round no client answered, an unreadable checkpoint, a folder another run holds, ...) is a
:class:`FedmoeError`. Both carry a one-line message naming the problem and the fix, so the CLI prints them
without a traceback (:func:`fedmoe.cli.main`); any other exception is a bug and keeps its traceback.
"""


class FedmoeError(RuntimeError):
    """An error the kit raises on purpose: its message names the problem and the fix."""
