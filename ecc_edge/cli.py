"""One error line for what a user of a command-line tool can cause; the traceback on request.

Shared by every tool of the repository (``tools/*.py``), including the light edge client, so it
imports nothing beyond the standard library and this package: the errors of ``ecc_mmdet`` are
recognised by their class names, and its translation of misspelled config types and arguments
is used only when that package is already loaded.
"""
import functools
import sys
import traceback

from .sidecar import EdgeRuntimeError

__all__ = ['main_guard']

#: error classes (and their subclasses, by name) a user causes: a config value, a checkpoint,
#: a dataset path, a sidecar (EdgeRuntimeError), a missing file
USER_ERROR_NAMES = ('ConfigError', 'DatasetNotFoundError')


def _user_error(e: BaseException):
    """``e`` itself, its one-line ConfigError (a misspelled type or argument), or None."""
    if isinstance(e, (FileNotFoundError, EdgeRuntimeError)) or \
            any(c.__name__ in USER_ERROR_NAMES for c in type(e).__mro__):
        return e
    build_errors = sys.modules.get('ecc_mmdet.apis.build_errors')  # loaded with ecc_mmdet
    if isinstance(e, (KeyError, TypeError)) and build_errors is not None:
        return build_errors.config_error_of(e)
    return None


def _one_line(e: BaseException) -> str:
    return ' '.join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())


def main_guard(main):
    """Decorate a tool's ``main(argv=None) -> int``: a user error prints ``error: ...`` in one
    line to stderr and returns 2; ``--debug`` (taken out of argv) prints the traceback before
    it. Any other exception (a bug) propagates with its traceback."""

    @functools.wraps(main)
    def guarded(argv=None):
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = '--debug' in argv
        argv = [a for a in argv if a != '--debug']
        try:
            return main(argv)
        except Exception as e:  # noqa: BLE001 -- sorted below, re-raised unless a user's
            error = _user_error(e)
            if error is None:
                raise
            if debug:
                traceback.print_exc()
            print(f'error: {_one_line(error)}', file=sys.stderr)
            return 2
    return guarded
