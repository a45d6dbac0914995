"""The kit's base of the errors it raises on purpose about the state of a run (not a bad value).

A bad value is a ``ValueError`` (:class:`ConfigError` and its kin); a run that cannot go on
(a round no client answered, an unreadable checkpoint, a folder another run holds, ...) is a
:class:`FedmoeError`. Both carry a one-line message naming the problem and the fix, so the CLI prints them
without a traceback (:func:`fedmoe.cli.main`); any other exception is a bug and keeps its traceback.
"""


class FedmoeError(RuntimeError):
    """An error the kit raises on purpose: its message names the problem and the fix."""


class ConfigError(ValueError):
    """A config value that is unknown, of the wrong type or out of range; the message is one line naming the
    key, the value, what is expected and a fix. Defined here, below every module that raises it (the config
    tree, devices, data), and re-exported by :mod:`fedmoe.config`."""
