"""Records which files under the working directory a Python process opens for reading.

Put this folder on PYTHONPATH and set XREFLECT_AUDIT_LOG to a file: every process then appends
one line per file it read, `<command line>\t<path>`, when it exits. tests/test_pipeline_e2e.py runs
`dvc repro` this way and checks each stage's reads against the deps dvc.yaml declares for it.
"""
import atexit
import os
import sys

_LOG = os.environ.get("XREFLECT_AUDIT_LOG")

if _LOG:
    _root = os.getcwd() + os.sep
    _reads: set[str] = set()

    def _is_read(args) -> bool:
        mode, flags = (args + (None, None))[1:3]
        if isinstance(mode, str):
            return "r" in mode and "+" not in mode
        return isinstance(flags, int) and flags & os.O_ACCMODE == os.O_RDONLY

    def _hook(event, args):
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(_root) and _is_read(args):
            _reads.add(path)

    def _flush():
        # The audit event comes before the open: keep only files that exist (a failed look-up,
        # e.g. for package metadata, reads nothing).
        read = sorted(path for path in _reads if os.path.isfile(path))
        if read:
            command = " ".join(sys.orig_argv[1:])
            with open(_LOG, "a", encoding="utf-8") as fh:
                fh.write("".join(f"{command}\t{path[len(_root):]}\n" for path in read))

    sys.addaudithook(_hook)
    atexit.register(_flush)
