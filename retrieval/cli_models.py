"""The command line's "bring your own model" commands: ``add-model`` and ``remove-model``.

Why apart from ``cli.py``: they are one feature with their own options.
Like every command, each is one ``Studio`` call plus printing; ``models
--db DB`` lists the added models with the others.

    python -m retrieval add-model mynet --file mynet.keras --layer conv3 --preprocess torch --db g.sqlite
    python -m retrieval search query.jpg --model mynet --pooling gem --db g.sqlite
    python -m retrieval remove-model mynet --db g.sqlite
"""

from __future__ import annotations

import argparse

from .backbones.user_options import CUSTOM_FORM, PREPROCESS


def add_parsers(sub, db_help: str) -> None:
    p = sub.add_parser("add-model", help="register your own model file (.keras, a SavedModel folder or .onnx) as a "
                       "backbone of this database; it is copied into the data folder")
    p.add_argument("name", help="the backbone's name, as --model then takes it")
    p.add_argument("--file", required=True, metavar="PATH", help="a .keras file, a SavedModel folder or an .onnx file")
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="cut the model at this layer (Keras), or pick this output (name or index) of a model with "
                        "several; a 4-D output is a feature map and gets --pooling, a 2-D one is the vector")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="square N×N input (default: the model's own fixed size; required when it has none)")
    p.add_argument("--preprocess", default="none", metavar="SPEC",
                   help=f"how RGB 0..255 pixels become the model's input: {', '.join(PREPROCESS)}, "
                        f"or {CUSTOM_FORM} (default: none)")
    p.add_argument("--custom-object", action="append", default=[], metavar="MODULE:ATTR", dest="custom_objects",
                   help="a custom layer or function the file needs, imported from your code (repeatable); without "
                        "it the file loads in Keras' safe mode with nothing but Keras' own layers")
    p.add_argument("--replace", action="store_true", help="replace the model of that name and delete its vectors")
    p.add_argument("--db", help=db_help)
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = sub.add_parser("remove-model", help="remove a model added with add-model, its vectors and its copied file")
    p.add_argument("name", help="the model's name, as 'models --db DB' lists it")
    p.add_argument("--db", help=db_help)


def cmd_add_model(args: argparse.Namespace) -> int:
    from .cli import _print_json, _studio

    studio = _studio(args, must_exist=False)
    try:
        row = studio.add_model(args.name, args.file, layer=args.layer, input_size=args.input_size,
                               preprocess=args.preprocess, custom_objects=args.custom_objects, replace=args.replace)
    finally:
        studio.close()
    if args.json:
        _print_json(row)
    else:
        print(f"added {row['name']}: {row['format']} file, input {row['input_size']}×{row['input_size']}, "
              f"{row['status'].removeprefix('your model (').rstrip(')')}; dim {row['dim']}; stored as {row['path']}")
    return 0


def cmd_remove_model(args: argparse.Namespace) -> int:
    from .cli import _studio

    studio = _studio(args)
    try:
        if not studio.remove_model(args.name):
            raise FileNotFoundError(f"no model added from a file named {args.name!r} ('models --db DB' lists them)")
    finally:
        studio.close()
    print(f"removed {args.name}, its vectors and its file")
    return 0


COMMANDS = {"add-model": cmd_add_model, "remove-model": cmd_remove_model}
