"""The tools' command line (Detectron2's, plus ``--coco-dataset`` and ``--debug``) and launch."""

import functools
import os
import pickle
import sys
import tempfile
import traceback

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser as _d2_default_argument_parser
from detectron2.engine import launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException

from ..data import register_coco_instances_checked
from ..errors import ConfigError, SAEJHeadError, other_messages_on_stdout, run_tool
from .train_loop import input_errors_on_one_line

_SPEC_FORMAT = "NAME=ANNOTATIONS.json,IMAGE_DIR"


def add_coco_dataset_argument(parser):
    """Add the repeatable ``--coco-dataset NAME=ANNOTATIONS.json,IMAGE_DIR`` option to
    ``parser``; return it."""
    parser.add_argument(
        "--coco-dataset",
        action="append",
        default=[],
        metavar=_SPEC_FORMAT,
        help="register a COCO-format dataset under NAME (repeatable); use NAME in the config, "
        "e.g. dataloader.train.dataset.names=NAME or DATASETS.TRAIN \"('NAME',)\"",
    )
    return parser


def add_debug_argument(parser):
    """Add ``--debug`` (the traceback of an input error, :func:`sa_ejhead.errors.run_tool`)."""
    parser.add_argument(
        "--debug", action="store_true", help="on a bad input, show the error's full traceback"
    )
    return parser


def default_argument_parser(epilog=None):
    """Detectron2's :func:`~detectron2.engine.default_argument_parser` plus ``--coco-dataset``
    and ``--debug``."""
    return add_debug_argument(add_coco_dataset_argument(_d2_default_argument_parser(epilog)))


def _run_tool_main(main, debug, error_dir, args):
    """``main(args)`` in a process of ``launch``; without ``debug``, a project error is logged on
    one line and, in a process that ``launch`` started (``error_dir`` is not None), pickled into
    ``error_dir`` for the parent to report, and the process exits with status 1."""
    if debug:
        return main(args)
    with input_errors_on_one_line(), other_messages_on_stdout():
        try:
            return main(args)
        except SAEJHeadError as e:
            if error_dir is None:  # the tool's own process: run_tool reports it
                raise
            rank = comm.get_local_rank()
            worker = "".join(traceback.format_exception(e)).rstrip()
            e.add_note(f"Raised in the launched process of local rank {rank}:\n{worker}")
            try:
                data = pickle.dumps(e)
            except Exception:  # an attribute that does not pickle: torch reports it as it is
                raise e
            with open(os.path.join(error_dir, f"{rank}.pkl"), "wb") as f:
                f.write(data)
            sys.exit(1)


def _launch(main, args, error_dir):
    """Detectron2's ``launch`` of ``main(args)``; re-raise here the project error that the
    launched process that failed first saved (:func:`_run_tool_main`)."""
    run = functools.partial(_run_tool_main, main, args.debug, error_dir)
    try:
        launch(run, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, (args,))
    except ProcessExitedException as e:
        saved = os.path.join(error_dir or "", f"{e.error_index}.pkl")
        if not (error_dir and os.path.isfile(saved)):
            raise
        with open(saved, "rb") as f:
            error = pickle.load(f)
        raise error from None


def launch_tool(main, argv=None):
    """Parse a training tool's command line (:func:`default_argument_parser`) and run
    ``main(args)`` in every process of Detectron2's ``launch``, through
    :func:`sa_ejhead.errors.run_tool`; return the exit status."""
    args = default_argument_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sa_ejhead-errors-") as error_dir:
        several = args.num_gpus * args.num_machines > 1
        return run_tool(_launch, main, args, error_dir if several else None, debug=args.debug)


def parse_coco_dataset_spec(spec):
    """Split a ``--coco-dataset`` value into ``(name, json_file, image_root)``; a
    :class:`ConfigError` (a ValueError) if it is malformed or a file or folder does not exist."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(f"--coco-dataset {spec!r}: expected {_SPEC_FORMAT} (missing 'NAME=')")
    parts = rest.split(",")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise ConfigError(
            f"--coco-dataset {spec!r}: expected {_SPEC_FORMAT}, i.e. exactly one ',' between the "
            "annotation file and the image folder"
        )
    json_file, image_root = (p.strip() for p in parts)
    if not os.path.isfile(json_file):
        raise ConfigError(f"--coco-dataset {spec!r}: annotation file {json_file!r} does not exist")
    if not os.path.isdir(image_root):
        raise ConfigError(f"--coco-dataset {spec!r}: image folder {image_root!r} does not exist")
    return name, json_file, image_root


def register_datasets_from_args(args):
    """Register the ``--coco-dataset`` datasets of ``args`` (which may lack the option), in the
    function that ``launch`` runs in every process; return the names. The same name again with the
    same files is a no-op; with other files, an error."""
    names = []
    for spec in getattr(args, "coco_dataset", None) or []:
        name, json_file, image_root = parse_coco_dataset_spec(spec)
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            files = tuple(os.path.abspath(meta.get(k, "")) for k in ("json_file", "image_root"))
            if files != (os.path.abspath(json_file), os.path.abspath(image_root)):
                raise ConfigError(
                    f"--coco-dataset {spec!r}: a dataset named {name!r} is already registered "
                    "with other files; choose another NAME"
                )
        else:
            register_coco_instances_checked(name, json_file, image_root)
        names.append(name)
    return names
