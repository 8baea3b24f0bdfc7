"""Where the install is: the CLI finds the config the way the systemd unit does.

Order: ``--config``, else ``$CONTINUON_TRAINER_CONFIG``, else ``/etc/continuon/trainer.yaml``
when present, else the embedded default. The CLI says which one it used, so an operator who
typed bare ``continuon-trainer status`` on a robot sees that it read the installed config.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "CONTINUON_TRAINER_CONFIG"
ETC_CONFIG = Path("/etc/continuon/trainer.yaml")


def find_config(cli_config: Path | None, etc_config: Path = ETC_CONFIG) -> tuple[Path | None, str]:
    """The config file to load (None: the embedded default) and a phrase naming its source."""
    if cli_config is not None:
        return cli_config, f"{cli_config} (--config)"
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser(), f"{env} (${CONFIG_ENV})"
    if etc_config.is_file():
        return etc_config, f"{etc_config} (installed)"
    return None, "the embedded default (no --config, no $CONTINUON_TRAINER_CONFIG, no /etc one)"
