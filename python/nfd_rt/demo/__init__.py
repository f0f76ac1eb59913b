"""The playable demo: Gridworld (game.py), the model trained on it (gridworld.nfd) and its evaluation."""

import os

MODEL_PATH = os.path.join(os.path.dirname(__file__), "gridworld.nfd")
