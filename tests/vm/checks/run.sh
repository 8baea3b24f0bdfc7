#!/bin/bash
# In the VM, from vmtest-runner: every check in one go (the guest's own python3, stdlib only).
exec python3 -u /mnt/share/vm_checks.py
