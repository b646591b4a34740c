"""``alexnet <command>``: parse the command line and dispatch to the command's module.

Every command (``commands/``) registers its parser with ``add_parser`` and runs with ``run(args)``.
Every command exits 0 on success and 2 with a one-line message on bad usage or bad input;
results that scripts read (eval's JSON line) go to stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import errno
import sys

from .commands import (
    ablate,
    bench,
    evaluate,
    explain,
    export,
    figure1,
    figures,
    import_weights,
    predict,
    prepare,
    report,
    retrieve,
    serve,
    train,
)
from .errors import UsageError

# Every command, in --help order.
COMMANDS = (train, evaluate, predict, explain, retrieve, prepare, export, import_weights, serve, bench, figure1, ablate,
            figures, report)


def build_parser() -> argparse.ArgumentParser:
    """``alexnet`` and its sub-commands."""
    parser = argparse.ArgumentParser(prog="alexnet",
                                     description="The AlexNet paper (Krizhevsky et al., 2012) as software.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with key=value overrides taken wherever they stand: ``train data.limit=10
    --out runs/x optim.epochs=1`` (argparse alone stops the overrides at the first option)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.parse_args(argv)  # argparse's own message for what is left, and exit 2
    if getattr(args, "ensemble", None):  # nargs="+" also took the key=value overrides that followed it
        overrides += [str(p) for p in args.ensemble if "=" in p.name and not p.exists()]
        args.ensemble = [p for p in args.ensemble if not ("=" in p.name and not p.exists())]
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from .runtime import configure_process

    configure_process()  # the command's own process, not a library user's: see its docstring
    try:
        return args.run(args)
    except UsageError as err:
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full or read-only disk, anywhere a command writes: one line, not a traceback
        if err.errno not in DISK_FULL | NOT_ALLOWED:
            raise
        print(f"alexnet {args.command}: error: {disk_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NOT_ALLOWED = {errno.EROFS, errno.EACCES, errno.EPERM}


def disk_error(err: OSError) -> str:
    """The one line for ``err``, a write the disk or the file system refused, and what to do."""
    where = f" writing {err.filename}" if err.filename else ""
    if err.errno in DISK_FULL:
        return (f"{err.strerror}{where}: free disk space (or point --out / $ALEXNET_DATA at a larger disk), then "
                "run the command again; a training run continues with --resume")
    return (f"{err.strerror}{where.replace('writing', 'at')}: the file or its folder may not be written here; "
            "fix its permissions or choose another folder, then run the command again")


if __name__ == "__main__":
    sys.exit(main())
