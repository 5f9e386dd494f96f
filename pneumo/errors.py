"""Exceptions a user can act on: each message says what went wrong and what to do next."""


class PneumoError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(PneumoError):
    """params.yaml is missing, malformed, or holds an unknown or invalid key."""


class DatasetError(PneumoError):
    """The dataset folder is missing, empty, not in the Kermany layout, or too damaged to use."""


class ContractError(PneumoError):
    """The manifest broke the Great Expectations data contract."""


class SplitError(PneumoError):
    """The split cannot be made, or it leaks a patient across splits."""


class PipelineOrderError(PneumoError):
    """A step's input is missing because an earlier step has not run."""
