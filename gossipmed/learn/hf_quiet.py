"""Keep transformers' and peft's chatter out of gossipmed's output, at its sources.

transformers draws a tqdm bar for every load and save (`Loading weights`, `Writing model
shards`) and logs advice meant for its own users; gossipmed reports its own progress and
checks weights itself (gossipmed.learn.weights_check), so both are switched off through
transformers' own logging switches before a model is loaded or saved. peft asks every model
it wraps for `is_gradient_checkpointing`, which transformers 5 deprecates with a
FutureWarning that no gossipmed user can act on: only that warning, only around the
wrapping, is filtered. No global warnings filter is installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

PEFT_CHECKPOINTING_PROBE = r"`is_gradient_checkpointing` is deprecated"


def quiet_transformers() -> None:
    """No progress bars and only errors from transformers' logger (idempotent)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around `get_peft_model` and `PeftModel.from_pretrained`: drop the deprecation warning
    peft's attribute probe raises."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_CHECKPOINTING_PROBE, category=FutureWarning)
        yield
