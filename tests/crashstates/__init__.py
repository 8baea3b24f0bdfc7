"""Crash-state enumeration (ALICE/CrashMonkey style) for the store, ledger, status and
checkpoints: record an operation's file-system calls, build every state a power cut may leave
under a stated persistence model, run the real recovery path on each, check the invariants."""
