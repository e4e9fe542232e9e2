"""The one error type users see: a single line naming the field and what it allows."""


class ConfigError(ValueError):
    """Bad user input (config, override, data folder, checkpoint); the CLI prints it and exits 2."""
