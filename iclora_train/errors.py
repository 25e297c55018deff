"""User-facing errors of training and sampling (one line: what is wrong, what to do)."""

from iclora_data.errors import IcloraError


class TrainDatasetError(IcloraError):
    """The dataset cannot be trained on (missing captions, sizes no bucket fits, unreadable)."""


class BaseModelError(IcloraError):
    """The base model is missing, unreadable or not a FLUX pipeline."""


class ResumeError(IcloraError):
    """A checkpoint does not match the run that wants to resume from it."""


class OutputBusyError(IcloraError):
    """Another run is writing the same output folder."""


class SampleError(IcloraError):
    """Bad sampling input: no LoRA, empty prompts, bad reference."""


class LaunchError(IcloraError):
    """A multi-process training launch failed."""
