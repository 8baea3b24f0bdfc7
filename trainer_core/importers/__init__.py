"""Bring data recorded by other stacks in as layout-A RLDS episodes (``continuon-trainer
import``): LeRobot datasets (:mod:`.lerobot`) and Donkeycar tubs (:mod:`.donkey`). Importers
never import torch; pyarrow (LeRobot only) is the optional ``[import]`` extra."""
