"""app.server.serve's arguments as launch.py hands them over: every option, with its default."""
from __future__ import annotations

import argparse


def launch_args(**options) -> argparse.Namespace:
    """launch.py's parsed command line with no flags, then ``options`` (by their attribute
    names: ckpt_dir, api_auth, ...) in place of the defaults. A name launch.py has no option
    for is an error, so a test cannot hand serve() what launch.py never would."""
    import launch

    args = launch.build_parser().parse_args([])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"launch.py has no option for {', '.join(unknown)}")
    vars(args).update(options)
    return args
