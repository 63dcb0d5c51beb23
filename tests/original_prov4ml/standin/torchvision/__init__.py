"""An offline stand-in for the parts of torchvision the original prov4ml examples use.

The PyPI torchvision wheel does not load against this project's CPU torch and the tests have no
network, so ``tests/original_prov4ml/test_original_examples.py`` puts this folder first on
``sys.path`` of the example's process. ``datasets.MNIST`` yields synthetic 28x28 digits (no
download); ``transforms`` draws its random choices from torch's generator as torchvision does.
Never imported by the package.
"""

__version__ = "0.0+standin"
