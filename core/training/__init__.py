"""Training and fine-tuning DA3 networks (torch).

One function, :func:`train`, driven by a typed :class:`TrainConfig`:

* the network is any preset: built with random weights (training from scratch) or loaded from
  a checkpoint (fine-tuning), optionally with the ViT backbone frozen (seeds, FAQ Q4: freeze
  the ViT when you have fewer than ~10k images, train the DualDPT head);
* data come from the synthetic scene generator (:class:`SyntheticData`: random layouts,
  textures, lighting and view counts) or from a folder of the user's scenes
  (:class:`~da3_plugins.core.datasets.FolderDataset`: images + depth + cameras, or COLMAP);
* ground truth is expressed in the first view's camera frame and normalised to unit mean
  point distance (:func:`prepare_targets`), and the paper's five losses are applied
  (:mod:`~da3_plugins.core.losses`), plus, when ``loss.correspondence`` > 0, a training aid of
  this project: one head per cross-view block is taught where each patch's surface lies in the
  first view (:func:`~da3_plugins.core.losses.correspondence_loss`; see the README's embedded
  model for why);
* with probability ``pose_condition_prob`` a batch is conditioned on its true cameras, so the
  camera encoder learns too (the paper uses 0.2);
* checkpoints are ``config.json`` + ``model.safetensors`` (the layout ``load_model`` reads) plus
  ``train_state.safetensors`` / ``train_state.json`` (optimizer moments, step, loss history), so a
  run resumes where it stopped and gives the same weights as an uninterrupted one;
* every random choice derives from ``seed`` and the step number: two runs with one config give
  the same weights;
* under ``torchrun`` (:func:`distributed_from_env`) the step is data-parallel
  (DistributedDataParallel, gloo on CPU, nccl on CUDA): ``batch_size`` is per process, each
  process loads its slice of one global batch plan, the loss is normalised over the whole
  batch, and process 0 alone writes checkpoints and logs.

The package is layered as nerfstudio separates its trainer, data managers and models:

* :mod:`.config`: :class:`TrainConfig`, :class:`SyntheticDataConfig`;
* :mod:`.data`: the data sources and what they give (:class:`Batch`, :class:`SyntheticData`,
  :class:`FolderData`, :func:`fit_views`, :func:`pseudo_label_depth`);
* :mod:`.step`: one step's computation (:class:`Targets`, :func:`prepare_targets`,
  :func:`forward_for_training`, :class:`TrainingForward`, :func:`compute_losses`);
* :mod:`.loop`: :func:`train`, checkpoints and resuming (:func:`save_checkpoint`,
  :func:`build_model`, :class:`TrainResult`), data parallelism (:func:`distributed_from_env`,
  :class:`Distributed`, :func:`torchrun_env`).

Each layer imports only the ones listed before it.
"""

from .config import SyntheticDataConfig, TrainConfig
from .data import Batch, FolderData, RandomizedData, SyntheticData, fit_views, pseudo_label_depth
from .loop import (
    STATE_JSON,
    STATE_WEIGHTS,
    Distributed,
    TrainResult,
    build_model,
    distributed_from_env,
    save_checkpoint,
    torchrun_env,
    train,
)
from .step import Targets, TrainingForward, compute_losses, forward_for_training, prepare_targets

__all__ = [
    "SyntheticDataConfig", "TrainConfig", "Batch", "SyntheticData", "RandomizedData", "FolderData", "fit_views", "pseudo_label_depth",
    "Targets",
    "prepare_targets", "forward_for_training", "TrainingForward", "compute_losses", "save_checkpoint",
    "TrainResult", "build_model", "train", "Distributed", "torchrun_env", "distributed_from_env",
]
