"""The safety head (``safety.head``) and the promotion rule (``safety.rule``): pure math over
arrays and metrics. Imports nothing from the other packages, and never torch.

Submodules are imported by name (``from safety.head import SafetyHead``) so that importing the
config alone stays light."""
