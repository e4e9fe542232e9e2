"""The one error type users see: a single line naming the field and what it allows."""


class ConfigError(ValueError):
    """Bad user input (config, override, data folder, checkpoint); the CLI prints it and exits 2."""


class InjectedFault(RuntimeError):
    """Raised on purpose (the ``faults:`` section) to rehearse a crash: not a bug."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what the user can do next (``--resume FOLDER``); the CLI prints it and exits 130."""
