"""The ``da3p`` commands that train and score models: train, eval.

See :mod:`da3_plugins.commands` for the contract of a command.
"""

from __future__ import annotations

import json
from pathlib import Path

from da3_plugins.core.errors import DatasetError, UserInputError, first_line
from da3_plugins.runner import Progress, load_model_for


def train_config_from_args(args):
    """The TrainConfig of ``da3p train`` arguments (defaults: the embedded model's recipe); a bad
    value is the configs' own OptionError."""
    from da3_plugins.core.errors import OptionError
    from da3_plugins.core.losses import LossWeights
    from da3_plugins.core.training import SyntheticDataConfig, TrainConfig

    base = TrainConfig()
    syn = base.synthetic
    h, w = args.size or (syn.height, syn.width)
    lo, hi = args.views or (syn.min_views, syn.max_views)
    generator = getattr(args, "generator", None) or syn.generator
    extra = {}
    if generator != syn.generator:  # the randomized scenes: field of view 40-100 degrees, several sizes
        extra = dict(generator=generator, fov_range=(40.0, 100.0), sizes=tuple(getattr(args, "sizes", None) or ()),
                     max_tokens=getattr(args, "max_tokens", None) or 0)
    elif getattr(args, "sizes", None) or getattr(args, "max_tokens", None):
        raise OptionError("--sizes, --max-tokens: only with --generator randomized")
    syn = SyntheticDataConfig(height=h, width=w, scenes=args.scenes or syn.scenes,
                              views_per_scene=max(syn.views_per_scene, hi), min_views=lo, max_views=hi,
                              seed=args.data_seed,
                              max_view_gap=syn.max_view_gap if args.view_gap is None else args.view_gap, **extra)
    return TrainConfig(
        preset=args.preset, init=args.init, data=args.data, teacher=args.teacher, synthetic=syn, freeze_backbone=args.freeze_backbone,
        steps=args.steps or base.steps, batch_size=args.batch_size or base.batch_size, lr=args.lr or base.lr,
        backbone_lr_scale=args.backbone_lr_scale, warmup=base.warmup if args.warmup is None else args.warmup,
        pose_condition_prob=base.pose_condition_prob if args.pose_condition is None else args.pose_condition,
        save_every=args.save_every or base.save_every, seed=args.seed,
        loss=LossWeights(camera=base.loss.camera if args.camera_weight is None else args.camera_weight,
                         correspondence=(base.loss.correspondence if args.correspondence is None
                                         else args.correspondence)),
    )


def cmd_train(args, progress: Progress) -> int:
    import torch

    from da3_plugins.core.training import distributed_from_env, train

    if args.data is not None and not Path(args.data).is_dir():
        raise UserInputError(f"--data {args.data}: no such folder")
    if args.init is not None:
        from da3_plugins.core.model_source import classify_model_source

        try:
            classify_model_source(args.init)  # embedded, a folder, a file or a hub id
        except UserInputError as exc:
            raise UserInputError(f"--init {first_line(exc)}") from None
    cfg = train_config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"-o {args.output}: exists and is not a folder")
    if cfg.data is not None:
        from da3_plugins.core.datasets import FolderDataset

        try:
            FolderDataset(cfg.data)
        except DatasetError as exc:
            raise UserInputError(f"--data {first_line(exc)}") from None
    log_file = None

    def log(entry):
        nonlocal log_file
        if log_file is None:  # opened at the first step, once the run has started
            log_file = open(out / "train_log.jsonl", "a")
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        if progress.mode == "json":
            progress.event("step", **entry)

    # under torchrun (WORLD_SIZE > 1): data-parallel, process 0 writes the run folder and talks
    with distributed_from_env(args.device) as ddp:
        lead = ddp is None or ddp.rank == 0
        if ddp is not None and lead:
            text = f"DDP: {ddp.world_size} processes ({ddp.backend}), global batch {ddp.world_size * cfg.batch_size}"
            if progress.mode == "json":
                progress.info(text)
            else:
                print(text, flush=True)
        try:
            result = train(cfg, out, resume=args.resume, progress=lead and progress.mode == "bar",
                           log=log if lead else None, device=ddp.device if ddp is not None else args.device)
        except (FileExistsError, FileNotFoundError) as exc:  # the run folder: resume or another one
            raise UserInputError(first_line(exc)) from None
        finally:
            if log_file is not None:
                log_file.close()
    if not lead:
        return 0
    last = result.history[-1] if result.history else {}
    first = result.history[0] if result.history else {}
    print(f"Done: {result.steps} steps in {result.seconds:.0f} s; loss {first.get('loss', float('nan')):.3f} -> "
          f"{last.get('loss', float('nan')):.3f}. Checkpoint: {out}/ (config.json + model.safetensors)")
    print(f"  evaluate it: da3p eval --model {out}    use it: da3p reconstruct PHOTOS -o OUT --model {out}")
    return 0


def cmd_eval(args, progress: Progress) -> int:
    import torch

    from da3_plugins.core.evaluation import FAMILIES, FAMILY_SEEDS, evaluate, family_scenes, family_table, heldout_scenes

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model_for(args.model, device="cpu" if args.device == "auto" else args.device, progress=progress)
    if not model.predicts_cameras:
        raise UserInputError(f"--model {args.model}: {model.preset} predicts no cameras; da3p eval scores poses too "
                         "(use an any-view model)")
    sizes = args.size or ((126, 168),)
    families = FAMILIES if args.family == "all" else (args.family,)
    jobs = []  # (family, size label, where, scenes)
    if args.data is not None:
        from da3_plugins.core.datasets import FolderDataset
        from da3_plugins.core.training import fit_views

        if args.family != "rooms":
            raise UserInputError("--family: held-out synthetic families and --data exclude each other")
        try:
            ds = FolderDataset(args.data)
        except DatasetError as exc:
            raise UserInputError(f"--data {first_line(exc)}") from None
        for h, w in sizes:
            scenes = []
            for i in range(len(ds)):
                s = ds[i]
                s.images, s.depth, s.intrinsics = fit_views(s.images, s.depth, s.intrinsics, h, w)
                scenes.append(s)
            jobs.append(("data", f"{h}x{w}", f"{len(scenes)} scenes of {args.data}", scenes))
    else:
        for family in families:
            for h, w in sizes:
                progress.update("scenes", 0, args.scenes, f"rendering held-out {family} scenes at {h}x{w}")
                if family == "rooms":  # the held-out pool of the rooms generator (--seed, default 1000)
                    scenes = heldout_scenes(args.scenes, views=args.views, height=h, width=w, seed=args.seed)
                    where = f"{len(scenes)} held-out synthetic scenes (seed {args.seed}), {args.views} views each, {h}x{w}"
                else:
                    seed = FAMILY_SEEDS[family] if args.seed == 1000 else args.seed
                    scenes = family_scenes(family, args.scenes, views=args.views, height=h, width=w, seed=seed)
                    where = (f"{len(scenes)} held-out '{family}' scenes (seeds {seed}..{seed + len(scenes) - 1}), "
                             f"{args.views} views each, {h}x{w}")
                progress.update("scenes", args.scenes, args.scenes, "done")
                jobs.append((family, f"{h}x{w}", where, scenes))
    name = f"{model.preset} (embedded)" if args.model == "embedded" else (args.model or model.preset)
    results = []
    for family, size, where, scenes in jobs:
        table = evaluate(model, scenes, baselines=not args.no_baselines, random_baseline=not args.no_baselines,
                         progress=lambda d, t: progress.update("eval", d, t, ""), name=name)
        results.append((family, size, where, table))
        print(f"Evaluation on {where}:")
        print(table.format())
    if len(results) > 1:
        print("All families:")
        print(family_table([(f, s, t) for f, s, _, t in results]))
    if args.json:
        from da3_plugins.core.reconstruction import atomic_path

        if len(results) == 1:
            data = {"scenes": results[0][2], **results[0][3].to_json()}
        else:
            data = {"results": [{"family": f, "size": s, "scenes": w, **t.to_json()} for f, s, w, t in results]}
        with atomic_path(Path(args.json)) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=2) + "\n")
    print("AUC, delta1 and F-score in percent; AbsRel after one median scale per scene; Chamfer in units of the "
          "median true depth, F-score at 5% of it, after a Sim(3) fit.")
    return 0
