"""ImgAE-Dx: unsupervised anomaly detection on chest X-rays, streamed from Kaggle by byte ranges."""

__version__ = "0.1.0"
