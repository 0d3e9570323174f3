"""sa-ejhead's yacs keys, and config files loaded with checked overrides: an unknown key or a
value of the wrong type is a :class:`~sa_ejhead.errors.ConfigError` naming the key and the file."""

import difflib
import inspect
import os

from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, describe


def add_sa_ejhead_config(cfg):
    """Add the SA-FPN and EJ-Head keys (with the paper's defaults) to a ``get_cfg()`` config, in
    place; return it."""
    # The arguments of sa_ejhead.modeling.SAFPN, documented there (the others: MODEL.FPN)
    cfg.MODEL.SAFPN = CN()
    cfg.MODEL.SAFPN.MODE = "sa"  # mode
    cfg.MODEL.SAFPN.SQUARE_PAD = 0  # square_pad
    cfg.MODEL.SAFPN.SHARE_LATERALS = False  # share_laterals
    cfg.MODEL.SAFPN.FUSE_POSITION = "after"  # fuse_position
    cfg.MODEL.SAFPN.TD_ONLY_LEVELS = []  # td_only_levels

    # The arguments of sa_ejhead.modeling.EJROIHeads and BoundaryRefinement, documented there
    cfg.MODEL.EJ_HEAD = CN()
    cfg.MODEL.EJ_HEAD.INTERLEAVE = True  # interleave
    cfg.MODEL.EJ_HEAD.INTERLEAVE_APPEND_GT = True  # interleave_append_gt
    cfg.MODEL.EJ_HEAD.INTERLEAVE_IOU_THRESHOLD = 0.5  # interleave_iou_threshold
    cfg.MODEL.EJ_HEAD.INTERLEAVE_MAX_POSITIVES = 128  # interleave_max_positives
    cfg.MODEL.EJ_HEAD.REFINEMENT = "residual"  # BoundaryRefinement's mode; "none": no refinement
    cfg.MODEL.EJ_HEAD.REFINEMENT_SCOPE = "shared"  # refinement_scope
    cfg.MODEL.EJ_HEAD.REFINEMENT_CHANNELS = 0  # BoundaryRefinement's bottleneck_channels
    cfg.MODEL.EJ_HEAD.THREADED_POOLING = False  # threaded_pooling
    cfg.MODEL.EJ_HEAD.THREADED_INFERENCE_POOLING = True  # threaded_inference_pooling
    cfg.MODEL.EJ_HEAD.BOX_INFERENCE_CHUNK = 256  # box_inference_chunk
    cfg.MODEL.EJ_HEAD.CHECKPOINT_REFINEMENT = False  # checkpoint_refinement
    cfg.MODEL.EJ_HEAD.CHECKPOINT_CHUNK = 256  # checkpoint_chunk

    # The learning-rate factor of the box heads' first fc (sa_ejhead.modeling.enriched_fc1_lr_factor)
    cfg.SOLVER.ENRICHED_FC1_LR_FACTOR = 1.0
    return cfg


def check_config_file(config_file):
    """Raise a :class:`ConfigError` if ``config_file`` is not given or is a missing local file."""
    if not config_file:
        raise ConfigError("no config file given: pass --config-file FILE")
    if "://" not in config_file and not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file!r} does not exist (--config-file)")


def _message(error):
    return str(error.args[0]) if error.args else str(error)


def load_yacs_config(config_file="", opts=None):
    """``get_cfg()`` + :func:`add_sa_ejhead_config` + a YAML file ('' for none) + ``KEY VALUE``
    overrides, not frozen."""
    cfg = add_sa_ejhead_config(get_cfg())
    if config_file:
        check_config_file(config_file)
        where = f"in config file {config_file!r} (or one of its _BASE_ files)"
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise ConfigError(
                f"{_message(e)} {where}; the keys of sa-ejhead come from add_sa_ejhead_config"
            ) from e
        except ValueError as e:
            raise ConfigError(f"{_message(e)} {where}") from e
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError, ValueError) as e:
        # yacs asserts "Non-existent key" and an odd number of items
        odd = "" if "Non-existent" in _message(e) or isinstance(e, ValueError) else f" {opts}"
        raise ConfigError(f"{_message(e)} in the command-line overrides{odd}") from e
    return cfg


def load_lazy_config(config_file, opts=None):
    """Load a LazyConfig file and apply ``key=value`` overrides (:func:`apply_lazy_overrides`)."""
    check_config_file(config_file)
    return apply_lazy_overrides(LazyConfig.load(config_file), opts, config_file)


# Keys that the engine reads with a default: settable without a "+" in a config that lacks them.
_ENGINE_OPTIONAL_KEYS = ("train.seed", "train.device")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_UNCHECKED = object()  # a value whose type an override is not checked against


def _target_keywords(node):
    """The named keyword arguments of the LazyCall ``node``'s ``_target_`` (for a class, of its
    ``__init__`` and, while ``**kwargs`` passes more on, its bases'); empty if there is none."""
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


def _find(cfg, key, target_args=False):
    """``(value, None)`` if the dotted ``key`` (``a.b.0.c``) names an entry of ``cfg`` (or, with
    ``target_args``, an unset argument of the LazyCall's ``_target_``): a scalar, a list, or
    ``_UNCHECKED``. Else ``(None, (reason, parent, addable))``: why not, the longest prefix that
    exists ("" for the root), and whether a key can be added there."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                reason = f"{parent!r} is a list of {len(node)} items, it has no item {part!r}"
                return None, (reason, parent, False)
            part = int(part)
        elif not isinstance(node, DictConfig):
            reason = f"{parent!r} is not a config node, so it has no key {part!r}"
            return None, (reason, parent, False)
        elif part not in node.keys():
            if target_args and i == len(parts) - 1 and part in _target_keywords(node):
                return _UNCHECKED, None
            return None, (f"{parent or 'the config root'!r} has no key {part!r}", parent, True)
        unset = OmegaConf.is_missing(node, part) or OmegaConf.is_interpolation(node, part)
        node = _UNCHECKED if unset else node[part]
    return (_UNCHECKED if isinstance(node, DictConfig) else node), None


def _all_keys(node, prefix=""):
    """Every dotted key under a config node (interpolations not followed)."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return []
    keys = []
    for name in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        keys.append(f"{prefix}{name}")
        if not (OmegaConf.is_missing(node, name) or OmegaConf.is_interpolation(node, name)):
            keys += _all_keys(node[name], f"{prefix}{name}.")
    return keys


def _closest_key(cfg, key, parent):
    """The key under ``parent`` (or argument of its ``_target_``) closest to ``key``, or None."""
    node = OmegaConf.select(cfg, parent) if parent else cfg
    prefix = parent + "." if parent else ""
    keys = _all_keys(node, prefix) + [prefix + name for name in sorted(_target_keywords(node))]
    candidates = {k[len(prefix) :]: k for k in keys}
    close = difflib.get_close_matches(key[len(prefix) :], list(candidates), n=1, cutoff=0.6)
    return candidates[close[0]] if close else None


# The kinds of value whose overrides are checked, and which others fit each (apply_lazy_overrides)
_KINDS = [
    (bool, "a boolean (true or false)"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    ((ListConfig, list, tuple), "a list"),
]
_ALSO_FITS = {
    "an integer": {"a list"},
    "a number": {"an integer", "a list"},
    "a string": {"a list"},
    "a list": {"an integer", "a number", "a string"},
}


def _kind(value):
    return next((name for types, name in _KINDS if isinstance(value, types)), None)


def _type_problem(old, new):
    """The kind of value ``new`` should have been to replace ``old``, or None if it fits."""
    expected = None if old is _UNCHECKED or new is None else _kind(old)
    if expected is None or isinstance(new, str) and "${" in new:  # an interpolation
        return None
    return None if _kind(new) in {expected} | _ALSO_FITS.get(expected, set()) else expected


def _apply_override(cfg, override, config_file):
    """Check (:func:`apply_lazy_overrides`) and apply one parsed Hydra override to ``cfg``."""
    text, key, value = override.input_line, override.key_or_group, override.value()
    here = f"Override {text!r}: "
    if override.is_sweep_override():
        raise ConfigError(f"{here}a sweep is not a value; write a list as [a,b]")
    change = not (override.is_add() or override.is_force_add() or override.is_delete())
    old, missing = _find(cfg, key, target_args=change)
    if missing is not None and (
        override.is_delete() or not missing[2] or (change and key not in _ENGINE_OPTIONAL_KEYS)
    ):
        reason, parent, addable = missing
        close = _closest_key(cfg, key, parent)
        raise ConfigError(
            f"{here}config file {config_file!r} has no key {key!r} ({reason})."
            + (f" Did you mean {close!r}?" if close else "")
            + (f" To add a new key on purpose, write '+{text}'." if change and addable else "")
        )
    if override.is_add() and missing is None and not isinstance(value, (dict, list)):
        raise ConfigError(
            f"{here}config file {config_file!r} already has the key {key!r}; drop the '+' to "
            f"change it (or write '+{text}')."
        )
    if override.is_delete():
        if value is not None and value != old:
            raise ConfigError(f"{here}{key!r} is {old!r}, not {value!r}: nothing deleted")
        parent, _, last = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        del node[int(last) if isinstance(node, ListConfig) else last]
        return
    expected = _type_problem(old if missing is None else _UNCHECKED, value)
    if expected:
        got = f"{value!r} ({type(value).__name__})"
        if isinstance(value, str):
            got = f"the string {value!r}"
        raise ConfigError(
            f"{here}{key!r} expects {expected} (it is {old!r} in config file {config_file!r}), "
            f"got {got}" + (f"; quote a string: {key}='{value}'" if expected == "a string" else "")
        )
    OmegaConf.update(cfg, key, value, merge=True, force_add=not change)


def apply_lazy_overrides(cfg, opts, config_file="<config>"):
    """Apply command-line overrides, in order, to a loaded LazyConfig, parsed by Hydra's parser
    as Detectron2's ``LazyConfig.apply_overrides`` parses them; return ``cfg``.

    ``key=value`` must name an existing key (a list item by its index), an argument of the
    ``_target_`` of its mapping, or ``train.seed`` / ``train.device``; a mapping value is merged.
    As in Hydra, ``+key=value`` adds a key (an error if it exists, unless the value is a mapping or
    a list), ``++key=value`` sets it either way, ``~key`` (``~key=value``: if it has that value)
    deletes it. A value must fit the one it replaces: an integer for an integer, a number for a
    float, true/false for a boolean, a string for a string; null replaces anything, a list may
    replace a number or a string and the other way round (one or several dataset names, sizes);
    mappings, objects and interpolations are not checked. Each fault is a :class:`ConfigError`
    naming the override, the key (with the closest existing one) and ``config_file``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for text in opts or []:
        try:
            override = parser.parse_override(text)
        except HydraException as e:
            raise ConfigError(f"Override {text!r}: cannot parse it ({describe(e)})") from e
        _apply_override(cfg, override, config_file)
    return cfg
