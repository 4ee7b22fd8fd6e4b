"""Errors a user can act on: each message names the problem and the fix."""


class FedPafiError(Exception):
    """Base of every error that the CLI reports as one clear line instead of a trace."""


class ConfigError(FedPafiError):
    """A setting has a value that is not allowed."""


class DataError(FedPafiError):
    """A data file or task is missing or unreadable."""


class ModelError(FedPafiError):
    """A backbone cannot be found or does not have the expected structure."""


class MaskMismatchError(FedPafiError):
    """A client's recomputed mask differs from the server's."""


class UpdateError(FedPafiError):
    """An update or state does not match the layout the method expects."""


class MergeError(FedPafiError):
    """A method's update cannot be folded into a plain model's weights."""
