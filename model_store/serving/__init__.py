"""The serving core: exactly what scoring a record needs, in NumPy and pandas alone.

Imputation, setting-cluster assignment, resolution, scaling, the forward passes of the
autoencoders and the exported forests, losses, thresholds and excursions, calibrated
probabilities, verdicts, the recipe book and the store reader. ``moldwatch score``, the worker,
``POST /score``, the recipes' pseudo-labels and the benches all score through this package.

Nothing here may import TensorFlow/Keras, scikit-learn, SciPy's optimisers, matplotlib or the
training and recipe-building modules: the worker image installs none of them
(``tests/model_store/serving/test_imports.py`` holds the line).
"""
