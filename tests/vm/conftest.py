"""The VM suite boots a qemu VM for minutes: it is collected only when asked for
(``make test-vm``; ``make test`` runs it beside the main suite where qemu has KVM, see
tests/vm/alongside.sh; or CONTINUON_VMTEST=1)."""

import os

collect_ignore_glob = [] if os.environ.get("CONTINUON_VMTEST") == "1" else ["test_*.py"]
