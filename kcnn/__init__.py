"""kcnn: convolutional-network architectures and transfer learning for Keras 3."""
__version__ = "0.1.0"
