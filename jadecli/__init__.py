"""jadecli: train and analyse JADE models (Joint Autoencoders for Dis-Entanglement).

jade train --primary synth-street --auxiliary synth-hand --n-labeled 100 --out runs/demo
"""

__version__ = "0.1.0"
