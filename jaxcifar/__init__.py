"""jaxcifar: train and benchmark image classifiers on CIFAR-10 and MNIST-style data in JAX."""

__version__ = "0.1.0"
