"""Training and evaluation with LazyConfig, as Detectron2's ``tools/lazyconfig_train_net.py``.

``do_train`` adds to Detectron2's loop: atomic checkpoints, an exactly resumable data stream and
random state (:mod:`sa_ejhead.engine.resume`), DistributedDataParallel on CPU processes, and
one-line errors (:mod:`sa_ejhead.errors`) for a config asking for CUDA on a machine without it, a
missing config file or checkpoint, an override of the wrong type, and a diverging training.
"""

import difflib
import inspect
import logging
import os

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.engine import default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import IterableDataset

from ..errors import ConfigError, describe, errors_logged_in
from .args import register_datasets_from_args
from .checkpoint import AtomicDetectionCheckpointer, check_checkpoint_path
from .ddp import create_ddp_model
from .resume import IterationSeeder, ResumableTrainingSampler, process_seed, run_seed
from .train_loop import AMPTrainer, EvalHook, SimpleTrainer

__all__ = [
    "apply_lazy_overrides",
    "build_lazy_model",
    "build_lazy_train_loader",
    "check_device",
    "do_test",
    "do_train",
    "load_lazy_config",
    "main",
]

logger = logging.getLogger("detectron2")


def check_device(device):
    """Return ``torch.device(device)``; fail early, with the fix in the message, when it is CUDA
    and there is none."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"The config asks for device {str(device)!r} but CUDA is not available on this "
            "machine; add 'train.device=cpu' (LazyConfig) or 'MODEL.DEVICE cpu' (yacs) to the "
            "command line."
        )
    return device


# Keys that the engine reads with a default (``cfg.train.get(...)``): they may be overridden
# without a "+" even in a config that does not set them (e.g. Detectron2's ``common/train.py``
# has no ``seed``).
_ENGINE_OPTIONAL_KEYS = ("train.seed", "train.device")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _parse_override(override):
    """Split ``[+|++]key=value`` into ``(prefix, key, "key=value")``."""
    text = override.strip()
    prefix = "++" if text.startswith("++") else "+" if text.startswith("+") else ""
    text = text[len(prefix) :]
    key = text.split("=", 1)[0].strip()
    return prefix, key, text


def _is_container_child(node, part):
    """Whether ``node[part]`` is a config node one can look into (no interpolation resolved)."""
    if OmegaConf.is_missing(node, part) or OmegaConf.is_interpolation(node, part):
        return False
    return OmegaConf.is_config(node[part])


def _target_keywords(node):
    """The keyword arguments of the LazyCall ``node``'s ``_target_`` (empty if not a LazyCall).

    Only named arguments count (``**kwargs`` accepts anything, typos included); for a class, those
    of its ``__init__`` and, while ``**kwargs`` passes more on, of its bases' ``__init__``.
    """
    if not isinstance(node, DictConfig) or "_target_" not in node.keys():
        return set()
    try:
        target = node._target_
        target = locate(target) if isinstance(target, str) else target
        if isinstance(target, type):
            inits = [c.__init__ for c in target.__mro__[:-1] if "__init__" in vars(c)]
        else:
            inits = [target]
        names = set()
        for init in inits:
            params = inspect.signature(init).parameters.values()
            names.update(p.name for p in params if p.kind in _NAMED)
            if all(p.kind != inspect.Parameter.VAR_KEYWORD for p in params):
                break
    except Exception:  # unknown target or no signature: only the config's own keys count
        return set()
    return names - {"self"}


def _missing_part(cfg, key, target_args=True):
    """None if the dotted ``key`` (``a.b.0.c``) names an entry of ``cfg`` (or, with
    ``target_args``, a keyword argument of a LazyCall's ``_target_`` that the config leaves unset);
    otherwise ``(reason, parent, addable)``: why not, the longest existing prefix of ``key`` (""
    for the root), and whether ``+`` can add it (its parent is a mapping)."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                reason = f"{parent!r} is a list of {len(node)} items, it has no item {part!r}"
                return reason, parent, False
            part = int(part)
        elif part not in node.keys():
            # a keyword argument of the LazyCall's target that the config leaves at its default
            if target_args and i == len(parts) - 1 and part in _target_keywords(node):
                return None
            return f"{parent or 'the config root'!r} has no key {part!r}", parent, True
        if i < len(parts) - 1:
            if not _is_container_child(node, part):
                here = ".".join(parts[: i + 1])
                reason = f"{here!r} is not a config node, so it has no key {parts[i + 1]!r}"
                return reason, here, False
            node = node[part]
    return None


def _all_keys(node, prefix=""):
    """Every dotted key of a config (mappings and lists, interpolations not resolved)."""
    if isinstance(node, DictConfig):
        names = [str(k) for k in node.keys()]
    elif isinstance(node, ListConfig):
        names = [str(i) for i in range(len(node))]
    else:
        return []
    keys = []
    for name in names:
        key = f"{prefix}{name}"
        keys.append(key)
        child = int(name) if isinstance(node, ListConfig) else name
        if _is_container_child(node, child):
            keys.extend(_all_keys(node[child], key + "."))
    return keys


def _closest_key(cfg, key, parent):
    """The key under ``parent`` (or argument of its ``_target_``) closest to ``key``, or None."""
    node = OmegaConf.select(cfg, parent) if parent else cfg
    start = len(parent) + 1 if parent else 0
    prefix = parent + "." if parent else ""
    keys = _all_keys(node, prefix) + [prefix + name for name in sorted(_target_keywords(node))]
    candidates = {k[start:]: k for k in keys}
    close = difflib.get_close_matches(key[start:], list(candidates), n=1, cutoff=0.6)
    return candidates[close[0]] if close else None


def check_config_file(config_file):
    """Raise a :class:`ConfigError` if ``config_file`` (a local path) is not given or does not
    exist."""
    if not config_file:
        raise ConfigError("no config file given: pass --config-file FILE")
    if "://" not in config_file and not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file!r} does not exist (--config-file)")


def load_lazy_config(config_file, opts=None):
    """Load a LazyConfig file and apply ``key=value`` overrides (:func:`apply_lazy_overrides`); a
    :class:`ConfigError` if the file does not exist."""
    check_config_file(config_file)
    return apply_lazy_overrides(LazyConfig.load(config_file), opts, config_file)


_UNCHECKED = object()  # a value whose type an override is not checked against


def _plain_value(cfg, key):
    """The value at the dotted ``key``: a scalar, or a ``ListConfig``; ``_UNCHECKED`` for a
    mapping, an interpolation, a missing value or a key that does not exist."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                return _UNCHECKED
            part = int(part)
        elif not isinstance(node, DictConfig) or part not in node.keys():
            return _UNCHECKED
        if OmegaConf.is_missing(node, part) or OmegaConf.is_interpolation(node, part):
            return _UNCHECKED
        node = node[part]
        if i < len(parts) - 1 and not OmegaConf.is_config(node):
            return _UNCHECKED
    return _UNCHECKED if isinstance(node, DictConfig) else node


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_list(v):
    return isinstance(v, (ListConfig, list, tuple))


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# (is the old value of this kind, the kind's name, does a new value fit it): the same type (an int
# for a float too); and, where Detectron2 takes one value or several (dataset names, sizes), a
# list for a number or a string, and the other way round. null replaces anything.
_KINDS = [
    (lambda v: isinstance(v, bool), "a boolean (true or false)", lambda v: isinstance(v, bool)),
    (_is_int, "an integer", lambda v: _is_int(v) or _is_list(v)),
    (lambda v: isinstance(v, float), "a number", lambda v: _is_number(v) or _is_list(v)),
    (lambda v: isinstance(v, str), "a string", lambda v: isinstance(v, str) or _is_list(v)),
    (_is_list, "a list", lambda v: _is_list(v) or _is_number(v) or isinstance(v, str)),
]


def _type_problem(old, new):
    """The kind of value ``new`` should have been to replace ``old``, or None if it fits."""
    if old is _UNCHECKED or new is _UNCHECKED or old is None or new is None:
        return None
    for is_kind, expected, fits in _KINDS:
        if is_kind(old):
            return None if fits(new) else expected
    return None  # another object (a class, a function, a ShapeSpec): not checked


def _describe_value(value):
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value!r} ({type(value).__name__})"


def apply_lazy_overrides(cfg, opts, config_file="<config>"):
    """Apply ``key=value`` overrides, in order, to a loaded LazyConfig, refusing unknown keys.

    An override must name an existing key (a list item by its index), a keyword argument of the
    ``_target_`` of the mapping it sits in, or an optional key the engine reads (``train.seed``,
    ``train.device``); otherwise a :class:`ConfigError` (a KeyError) names the key and
    ``config_file`` and suggests the closest key. As in Hydra, ``+key=value`` adds a key (an error
    if it exists) and ``++key=value`` sets it either way. A mapping value is merged into the
    existing mapping, as :meth:`LazyConfig.apply_overrides` does.

    A value must fit the type of the one it replaces, or a ConfigError names the key and the type
    it expects: an integer for an integer, a number for a float, true/false for a boolean, a
    string for a string; null replaces anything, and a list may replace a number or a string and
    the other way round (Detectron2 takes one or several dataset names, sizes...). A malformed
    value is a ConfigError too. See docs/tools.md.
    """
    for override in opts or []:
        prefix, key, assignment = _parse_override(override)
        if key.startswith("~"):
            pass  # deletion: Detectron2 says it does not support it
        elif prefix == "":
            missing = None if key in _ENGINE_OPTIONAL_KEYS else _missing_part(cfg, key)
            if missing is not None:
                reason, parent, addable = missing
                close = _closest_key(cfg, key, parent)
                raise ConfigError(
                    f"Override {override!r}: config file {config_file!r} has no key {key!r} "
                    f"({reason})."
                    + (f" Did you mean {close!r}?" if close else "")
                    + (f" To add a new key on purpose, write '+{assignment}'." if addable else "")
                )
        elif prefix == "+" and _missing_part(cfg, key, target_args=False) is None:
            raise ConfigError(
                f"Override {override!r}: config file {config_file!r} already has the key "
                f"{key!r}; drop the '+' to change it (or write '++{assignment}')."
            )
        old = _plain_value(cfg, key) if prefix != "+" else _UNCHECKED
        try:
            cfg = LazyConfig.apply_overrides(cfg, [assignment])
        except OverrideParseException as e:
            raise ConfigError(f"Override {override!r}: cannot parse it ({describe(e)})") from e
        new = _plain_value(cfg, key)
        expected = _type_problem(old, new)
        if expected:
            raise ConfigError(
                f"Override {override!r}: {key!r} expects {expected} (it is {old!r} in config "
                f"file {config_file!r}), got {_describe_value(new)}"
                + (f"; quote a string: {key}='{new}'" if expected == "a string" else "")
            )
    return cfg


def build_lazy_model(cfg):
    """Instantiate ``cfg.model`` and move it to ``cfg.train.device`` (default CUDA)."""
    device = check_device(cfg.train.get("device", "cuda"))
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    return model.to(device)


def _is_d2_train_loader(target):
    if isinstance(target, str):
        target = locate(target)
    return target is build_detection_train_loader


def build_lazy_train_loader(cfg, seed):
    """Instantiate ``cfg.dataloader.train`` with a :class:`ResumableTrainingSampler` seeded by
    the run's ``seed``, if it is Detectron2's ``build_detection_train_loader`` on a map-style
    dataset without a sampler of its own; otherwise as it is (its stream restarts on resume).

    Returns:
        tuple: ``(data_loader, sampler or None, samples_per_iter)``; ``samples_per_iter`` is the
        number of indices one process draws per iteration.
    """
    loader_cfg = cfg.dataloader.train
    if not (
        _is_d2_train_loader(loader_cfg.get("_target_"))
        and "dataset" in loader_cfg
        and loader_cfg.get("sampler", None) is None
    ):
        logger.warning(
            "dataloader.train is not build_detection_train_loader without a sampler: "
            "--resume will restart its data stream."
        )
        return instantiate(loader_cfg), None, 1
    kwargs = dict(loader_cfg.items())
    dataset = instantiate(loader_cfg.dataset)
    if isinstance(dataset, IterableDataset):
        return instantiate(loader_cfg), None, 1
    sampler = ResumableTrainingSampler(len(dataset), seed=seed)
    kwargs.update(dataset=dataset, sampler=sampler)
    # The loader's own generator, so that starting it draws nothing from the global one.
    kwargs.setdefault("seed", process_seed(seed))
    if kwargs.get("single_gpu_batch_size"):
        samples_per_iter = int(kwargs["single_gpu_batch_size"])
    else:
        samples_per_iter = int(kwargs["total_batch_size"]) // comm.get_world_size()
    return instantiate(kwargs), sampler, samples_per_iter


def do_test(cfg, model):
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    Returns:
        dict: the evaluator's results on the main process; ``{}`` on other processes or when the
        config has no evaluator.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    ret = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process() and ret:
        print_csv_format(ret)
    return ret or {}


def do_train(cfg, resume=False, extra_hooks=None):
    """Train the model of a LazyConfig; evaluate every ``train.eval_period`` and at the end.

    With ``resume=True`` and a ``last_checkpoint`` in ``train.output_dir``, training continues
    from it exactly (same data, same random draws); otherwise it starts from
    ``train.init_checkpoint``. ``train.seed`` (>= 0) fixes the data order and random state;
    without it a seed is drawn and kept in the checkpoints. ``extra_hooks`` run after the
    default ones.

    Returns:
        dict: the results of the last evaluation (main process), ``{}`` if none ran.
    """
    output_dir = cfg.train.output_dir
    resume_dir = output_dir if resume else None
    check_checkpoint_path(cfg.train.init_checkpoint, "train.init_checkpoint", resume_dir)
    seed = run_seed(cfg.train.get("seed", -1))
    # The model's initialisation too (default_setup may have done it; do_train can run alone).
    seed_all_rng(process_seed(seed))
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader, sampler, samples_per_iter = build_lazy_train_loader(cfg, seed)

    model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    amp = cfg.train.get("amp", {}).get("enabled", False)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, train_loader, optim)
    checkpointer = AtomicDetectionCheckpointer(model, output_dir, trainer=trainer)
    trainer.checkpointer = checkpointer  # names the last checkpoint if training diverges
    last = {}  # the results of the last evaluation

    def evaluate():
        last["results"] = do_test(cfg, model)
        return last["results"]

    main = comm.is_main_process()
    trainer.register_hooks(
        [
            IterationSeeder(seed, sampler, samples_per_iter),
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None),
            EvalHook(cfg.train.eval_period, evaluate),
            (
                hooks.PeriodicWriter(
                    default_writers(output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if main
                else None
            ),
        ]
        + list(extra_hooks or [])
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if resume and checkpointer.has_checkpoint():
        # The checkpoint stores the iteration that just finished.
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last.get("results", {})


def main(args):
    """Entry point of ``tools/lazyconfig_train_net.py``, run in every process by ``launch``."""
    register_datasets_from_args(args)
    cfg = load_lazy_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="sa_ejhead")
    with errors_logged_in(cfg.train.output_dir):
        if args.eval_only:
            check_checkpoint_path(cfg.train.init_checkpoint, "train.init_checkpoint")
            model = build_lazy_model(cfg)
            model = create_ddp_model(model)
            AtomicDetectionCheckpointer(model).load(cfg.train.init_checkpoint)
            return do_test(cfg, model)
        return do_train(cfg, resume=args.resume)
