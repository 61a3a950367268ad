"""The DA3 network: typed configs, the modules, checkpoint loading and :class:`DA3Model`.

Everything here imports torch.  The layers above (pipeline, exports, adapters) use it through
:func:`load_model` / :class:`DA3Model`; nothing in this package imports them back, except
``DA3Model.reconstruct`` and ``save_pretrained``, which call the pipeline and the atomic writer
lazily.
"""

from .da3model import DA3Model, load_model, random_model

__all__ = ["DA3Model", "load_model", "random_model"]
