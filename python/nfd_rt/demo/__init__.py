"""The playable demo: Gridworld (game.py), the model trained on it (gridworld.nfd), the students distilled from it
for fewer sampling steps (gridworld-2step.nfd, gridworld-1step.nfd; tools/train/distill_demo.py) and the
evaluation."""

import os

_HERE = os.path.dirname(__file__)
MODEL_PATH = os.path.join(_HERE, "gridworld.nfd")  # the teacher: 4 flow-matching steps per frame
MODELS = {  # shipped models by name (`nfd-rt demo --model NAME`)
    "gridworld": MODEL_PATH,
    "gridworld-2step": os.path.join(_HERE, "gridworld-2step.nfd"),
    "gridworld-1step": os.path.join(_HERE, "gridworld-1step.nfd"),
}
MODEL_FOR_STEPS = {4: "gridworld", 2: "gridworld-2step", 1: "gridworld-1step"}  # `nfd-rt demo --steps N`
