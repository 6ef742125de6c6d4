"""The ``unistore`` command (docs/cli.md has every command with an example).

::

    unistore [--store URL] put KEY JSON [--type T] [--tag k=v ...] [--ttl SECONDS]
    unistore [--store URL] get KEY [--type T]
    unistore [--store URL] rm KEY [--type T]
    unistore [--store URL] search [--pattern P] [--type T] [--tag k=v ...] [--limit N] [--json]
    unistore [--store URL] stats [--prometheus]
    unistore [--store URL] namespaces
    unistore [--store URL] check [--repair]
    unistore [--store URL] purge
    unistore [--store URL] backup DEST [--compact]
    unistore migrate SRC_URL DST_URL [--pattern P] [--type T] [--tag k=v ...] [--no-verify]
    unistore bench [--store URL]
    unistore demo [--store URL] [--force]
    unistore --version

``--store`` (before the command or after it) defaults to :data:`DEFAULT_STORE`,
an LMDB store in ``.unistore`` under the current directory. Only ``put`` (and
``demo``, and ``migrate``'s destination) may create a store or a namespace:
every other command needs one that exists, and says so in one line if it does
not. ``check``, ``purge``, ``stats`` and ``namespaces`` cover every namespace of
the store unless the URL names one (``?namespace=``).

A user's mistake (a missing key, a bad URL, bad JSON, an unreachable server, a
missing store) is one line ``unistore: ...`` on stderr and exit status 1; a
usage mistake is argparse's, status 2. Progress bars are drawn only when the
output is a terminal; a closed pipe ends the output quietly (status 141, as a
shell reports a SIGPIPE), and Ctrl-C is one line ``unistore: interrupted``
(status 130).

The package, by layer: :mod:`.parser` (the parser and :func:`main`) hands each verb to
its module (:mod:`.items`, :mod:`.maintenance`, :mod:`.migrate`, :mod:`.bench`,
:mod:`.demo`), which use :mod:`.options` (what several verbs read alike) and
:mod:`.render` (JSON, columns, progress bars). ``python -m unistore`` runs :func:`main`.
"""

from .demo import run_demo
from .items import STDIN
from .maintenance import ITEMS_GAUGE
from .options import DEFAULT_STORE, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED
from .parser import main, version
from .render import item_json, to_json

__all__ = [
    "DEFAULT_STORE",
    "EXIT_INTERRUPTED",
    "EXIT_PIPE_CLOSED",
    "ITEMS_GAUGE",
    "STDIN",
    "item_json",
    "main",
    "run_demo",
    "to_json",
    "version",
]
